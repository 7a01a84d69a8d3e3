"""Murder mystery over a shipped case file (envs/data/murder_mystery.json).

A case is a hidden (culprit, weapon, room) triple drawn uniformly from 6
suspects x 5 weapons x 5 rooms. The prompt carries a dossier: each suspect's
footprints, hair and hand, each weapon's wound and trace, each room's floor
and stains. Actions 0..6 examine a clue ("examine:<clue>"), which reports the
feature of the culprit, weapon or room it is about; actions 7..12 interview a
suspect ("interview:<suspect>"), who has "no_alibi" if guilty or without an
alibi anyway (the cook and the nephew), else "alibi". The last actions accuse:
with `accuse="culprit"` (default) one of the 6 suspects ("accuse:<suspect>"),
with `accuse="full"` one of the 150 triples ("accuse:<suspect>/<weapon>/<room>").
Examined clues become illegal.

Rewards: a right accusation (the culprit; with "full", the weapon and room
too) gives +1 and ends the case; a wrong one ends it with 0 (`tries` > 1
allows more accusations); running out of `turns` (20) ends it with 0.

Two clues always name the culprit (hair, then one of footprints, hand or an
interview); wound and trace name the weapon, floor and stains the room.

How this differs from PAPRIKA (Tajwar et al. 2025): there an LLM narrates one
of 203 written mysteries and answers free-form investigation, and the agent
must name the culprit; here the case file is a table, the clues and
interviews are fixed actions with scripted answers, and the dossier makes the
deduction checkable, so the env is exact and jittable.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import pathlib
from typing import ClassVar

import numpy as np

from jaxrl_lm.envs._qa_game import DATA, QAGame, QATable, info_gain, random
from jaxrl_lm.envs.core import check_choice, register

ACCUSE = ("culprit", "full")
KINDS = ("suspect", "weapon", "room")


def _features(text: str) -> dict[str, str]:
    return dict(item.split("=") for item in text.split())


@functools.lru_cache(maxsize=None)
def load_case_file(path: pathlib.Path = DATA / "murder_mystery.json") -> dict:
    """{'clues': {clue: (kind, values)}, 'suspect'|'weapon'|'room': {name: {feature: value}}}."""
    data = json.loads(path.read_text())
    clues = {c: (spec[0], tuple(spec[1:])) for c, spec in data["clues"].items()}
    out = {"clues": clues}
    for kind in KINDS:
        out[kind] = {n: _features(f) for n, f in data[kind + "s"].items()}
        for name, feats in out[kind].items():
            for clue, (k, vals) in clues.items():
                if k == kind and feats.get(clue) not in vals:
                    raise ValueError(f"{path}: {kind} {name!r} lacks a valid {clue!r}")
    return out


@functools.lru_cache(maxsize=None)
def case_table(accuse: str) -> QATable:
    """Hypothesis h = (suspect, weapon, room) in row-major order; clues, then interviews."""
    cf = load_case_file()
    names = {kind: tuple(cf[kind]) for kind in KINDS}
    suspects = names["suspect"]
    facts = tuple(cf["clues"]) + suspects
    values = tuple(v for _, v in cf["clues"].values()) + (("alibi", "no_alibi"),) * len(suspects)
    rows = []
    for case in itertools.product(*(names[k] for k in KINDS)):
        row = [vals.index(cf[kind][case[KINDS.index(kind)]][clue])
               for clue, (kind, vals) in cf["clues"].items()]
        row += [int(s == case[0] or cf["suspect"][s]["alibi"] == "no") for s in suspects]
        rows.append(row)
    if accuse == "culprit":
        guesses = tuple(f"accuse:{s}" for s in suspects)
        target = np.repeat(np.arange(len(suspects)), len(rows) // len(suspects))
    else:
        guesses = tuple("accuse:" + "/".join(c) for c in itertools.product(*names.values()))
        target = np.arange(len(rows))
    ask = tuple(f"examine:{c}" for c in cf["clues"]) + tuple(f"interview:{s}" for s in suspects)
    return QATable(facts=facts, values=values, answers=np.asarray(rows, np.int32), ask=ask,
                   guesses=guesses, target=target.astype(np.int32))


@register
@dataclasses.dataclass(frozen=True)
class MurderMystery(QAGame):
    """Murder mystery over the shipped case file; see the module docstring."""

    accuse: str = "culprit"  # what an accusation names: "culprit" | "full" (+ weapon, room)

    name: ClassVar[str] = "murder_mystery"

    def __post_init__(self):
        check_choice(self, "accuse", ACCUSE)  # before the table it selects is built
        super().__post_init__()

    @property
    def table(self) -> QATable:
        return case_table(self.accuse)

    def intro(self) -> str:
        cf = load_case_file()
        what = "who killed the victim" + (", with what and where" if self.accuse == "full" else "")
        lines = [f"Murder mystery: find {what}. Examine clues and interview suspects, then accuse; "
                 + ("an accusation ends the case." if self.tries == 1
                    else f"you may accuse {self.tries} times.")]
        for kind in KINDS:
            shown = {n: " ".join(f"{k}={v}" for k, v in f.items() if k != "alibi")
                     for n, f in cf[kind].items()}
            entries = ", ".join(f"{n} ({s})" for n, s in shown.items())
            lines.append(f"{kind.capitalize()}s: {entries}")
        return "\n".join(lines)

    def outro(self) -> str:
        target = "<suspect>" if self.accuse == "culprit" else "<suspect>/<weapon>/<room>"
        return ("\nAnswer with ACTION=examine:<clue>, ACTION=interview:<suspect> or "
                f"ACTION=accuse:{target}.\n")


BASELINES = {"info_gain": info_gain, "random": random}
