"""Guess my city over a shipped table (envs/data/guess_my_city.json).

A hidden city is drawn uniformly from 104 world cities. Actions 0..Q-1 ask one
question ("ask:<question>"): continent, hemisphere, latitude band, coastal,
capital, population band, language, climate, olympics, altitude, and the
first letter's band (a-f, g-l, m-r, s-z; derived from the name). The answer is
the city's table entry, one of a few values per question (not only yes/no).
Actions Q..Q+C-1 guess a city ("guess:<city>"). Asked questions become
illegal; guesses are always legal. Every city has a distinct row, so asking
all questions identifies it.

Rewards: a correct guess gives +1 and ends the episode; a wrong guess ends it
with 0 (`tries` > 1 allows more guesses, each tried one becomes illegal);
running out of `turns` (20, PAPRIKA's budget) ends it with 0.

Prompt (the answers in question order, the questions not yet asked, turns):
    Guess my city: find the hidden city (one of 104 world cities). ...
    Known: continent=europe coastal=yes
    Not asked: hemisphere latitude capital ...
    Turns left: 18
    Answer with ACTION=ask:<question> or ACTION=guess:<city>.

How this differs from PAPRIKA (Tajwar et al. 2025): there an LLM knows the
city (500 of them) and answers the agent's free-form questions; here the
questions are a fixed list and the answers are scripted from the table, so the
env is exact, cheap and jittable, and its answers never leak or err.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import ClassVar

import numpy as np

from jaxrl_lm.envs._qa_game import DATA, QAGame, QATable, info_gain, random
from jaxrl_lm.envs.core import register

LETTER_BANDS = ("a-f", "g-l", "m-r", "s-z")


def _letter_band(city: str) -> int:
    return sum(city[0] > band[-1] for band in LETTER_BANDS)


def load_cities(path: pathlib.Path = DATA / "guess_my_city.json") -> QATable:
    """The city table, with the derived first_letter question appended."""
    data = json.loads(path.read_text())
    facts = tuple(data["questions"]) + ("first_letter",)
    values = tuple(tuple(v) for v in data["questions"].values()) + (LETTER_BANDS,)
    cities = tuple(data["cities"])
    rows = []
    for city in cities:
        words = data["cities"][city].split()
        if len(words) != len(facts) - 1 or any(w not in v for w, v in zip(words, values)):
            raise ValueError(f"{path}: city {city!r} has a row that does not fit the questions")
        rows.append([v.index(w) for w, v in zip(words, values)] + [_letter_band(city)])
    return QATable(facts=facts, values=values, answers=np.asarray(rows, np.int32),
                   ask=tuple(f"ask:{f}" for f in facts),
                   guesses=tuple(f"guess:{c}" for c in cities),
                   target=np.arange(len(cities), dtype=np.int32))


CITIES = load_cities()


@register
@dataclasses.dataclass(frozen=True)
class GuessMyCity(QAGame):
    """Guess my city over the shipped table; see the module docstring."""

    name: ClassVar[str] = "guess_my_city"

    @property
    def table(self) -> QATable:
        return CITIES

    def intro(self) -> str:
        n = len(CITIES.guesses)
        guesses = "a guess ends the game" if self.tries == 1 else f"you have {self.tries} guesses"
        return (f"Guess my city: find the hidden city (one of {n} world cities). "
                f"Ask questions about it, then guess it; {guesses}.")

    def outro(self) -> str:
        return "\nAnswer with ACTION=ask:<question> or ACTION=guess:<city>.\n"


BASELINES = {"info_gain": info_gain, "random": random}
