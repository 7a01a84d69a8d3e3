"""Customer service over a shipped scenario table (envs/data/customer_service.json).

A customer calls with a complaint (no internet, laptop won't start, computer
slow, printer won't print, phone battery drains), shown in the first prompt.
Behind it is one of 28 scenarios, drawn uniformly, each with a fault and the
fix that solves it (20 fixes; some scenarios share one). Actions 0..13 ask a
diagnostic question ("ask:<question>": do other devices get online, router
lights, power light, recent changes, error message, noises, ...); the
customer's reply is the scenario's table entry (one of a few values).
Actions 14..33 suggest a fix ("fix:<fix>", the 20 fixes are listed in the
prompt). Asked questions and suggested fixes become illegal.

Rewards: the right fix gives +1 and ends the call; the customer tries up to
`tries` (3) suggested fixes, after which the call ends with 0, as it does
when the `turns` (20) run out. The prompt shows the complaint and replies so
far, the questions not yet asked, the fixes tried and the turns left.

How this differs from PAPRIKA (Tajwar et al. 2025): there an LLM plays the
customer of one of 628 free-text scenarios and judges whether the agent's
free-form advice solves it; here the scenarios are a small hand-written table,
the questions and fixes are fixed lists, and the customer's replies are
scripted from the table, so replies never contradict the scenario and the env
is jittable.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import ClassVar

import numpy as np

from jaxrl_lm.envs._qa_game import DATA, QAGame, QATable, info_gain, random
from jaxrl_lm.envs.core import register


def load_scenarios(path: pathlib.Path = DATA / "customer_service.json") -> QATable:
    """The scenario table: fact 0 is the complaint (given), then the questions."""
    data = json.loads(path.read_text())
    questions = data["questions"]
    facts = ("complaint",) + tuple(questions)
    values = (tuple(data["complaints"]),) + tuple(tuple(v) for v in questions.values())
    fixes = tuple(data["fixes"])
    rows, target = [], []
    for head, replies in data["scenarios"]:
        complaint, fix = head.split()
        row = [values[0].index(complaint)] + [0] * len(questions)  # default replies
        for item in replies.split():
            q, v = item.split("=")
            if q not in questions or v not in questions[q]:
                raise ValueError(f"{path}: scenario {head!r} has an unknown reply {item!r}")
            row[facts.index(q)] = questions[q].index(v)
        if fix not in fixes:
            raise ValueError(f"{path}: scenario {head!r} has an unknown fix {fix!r}")
        rows.append(row)
        target.append(fixes.index(fix))
    return QATable(facts=facts, values=values, answers=np.asarray(rows, np.int32),
                   ask=tuple(f"ask:{q}" for q in questions),
                   guesses=tuple(f"fix:{f}" for f in fixes),
                   target=np.asarray(target, np.int32))


SCENARIOS = load_scenarios()


@register
@dataclasses.dataclass(frozen=True)
class CustomerService(QAGame):
    """Customer service over the shipped scenarios; see the module docstring."""

    tries: int = 3  # fixes the customer tries before hanging up, 1..20

    name: ClassVar[str] = "customer_service"

    @property
    def table(self) -> QATable:
        return SCENARIOS

    def intro(self) -> str:
        fixes = " ".join(g.split(":", 1)[1] for g in SCENARIOS.guesses)
        return ("Customer service: a customer calls with a problem. Ask diagnostic questions, "
                "then suggest the fix that solves it; the customer tries "
                + ("only one fix" if self.tries == 1 else f"at most {self.tries} fixes")
                + f".\nFixes: {fixes}")

    def outro(self) -> str:
        return "\nAnswer with ACTION=ask:<question> or ACTION=fix:<fix>.\n"


BASELINES = {"info_gain": info_gain, "random": random}
