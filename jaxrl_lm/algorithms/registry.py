"""The algorithm registry: `algo.name` -> what the trainer needs to know.

Each algorithm file builds one `Algorithm` and registers it; importing
`jaxrl_lm.algorithms` imports them all. The trainer asks the registry, never
tests the name itself:

    alg = algorithms.get(cfg.algo.name)
    alg.kind            # "rl" (rollout -> advantages -> clipped loss) | "sft"
                        # | "preference" (pairs of chosen/rejected responses)
    alg.advantages      # (algo section, Trajectory, values | None) -> Advantages
    alg.pair_loss       # (preference section, PairLogps) -> ((sum, pairs), metrics)
    alg.needs_value     # the policy carries a value head (ppo)
    alg.needs_reference # preference: the loss reads a frozen reference's log-probs
    alg.check(algo)     # the algorithm's own rules on the algo section; raises ValueError
    alg.check_config(cfg)  # its rules across sections (the whole Config); raises ValueError
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


KINDS = ("rl", "sft", "preference")


def no_check(section: Any) -> None:
    del section


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str  # the value of algo.name
    kind: str  # "rl" | "sft" | "preference"
    advantages: Callable | None = None  # (algo, traj, values) -> Advantages; rl only
    needs_value: bool = False  # build the policy with a value head
    check: Callable[[Any], None] = no_check  # algo section -> None; ValueError if invalid
    summary: str = ""  # one line for `--help` and errors: the advantage and the paper
    # (preference section, PairLogps) -> ((loss sum, pairs), metrics); preference only
    pair_loss: Callable | None = None
    needs_reference: bool = False  # preference: reference log-probs are computed first
    check_config: Callable[[Any], None] = no_check  # whole Config -> None; ValueError if invalid

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Algorithm {self.name!r}: kind={self.kind!r} must be one of "
                             f"{', '.join(KINDS)}")
        if (self.kind == "rl") != (self.advantages is not None):
            raise ValueError(f"Algorithm {self.name!r}: an rl algorithm has an advantages "
                             f"function, the others none")
        if (self.kind == "preference") != (self.pair_loss is not None):
            raise ValueError(f"Algorithm {self.name!r}: a preference algorithm has a pair_loss "
                             f"function, the others none")


_REGISTRY: dict[str, Algorithm] = {}


def register(alg: Algorithm) -> Algorithm:
    """Add `alg` under its name (a second algorithm of that name is an error)."""
    if alg.name in _REGISTRY and _REGISTRY[alg.name] is not alg:
        raise ValueError(f"algorithm {alg.name!r} is already registered")
    _REGISTRY[alg.name] = alg
    return alg


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Algorithm:
    if name not in _REGISTRY:
        raise ValueError(f"algo.name={name!r}: must be one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
