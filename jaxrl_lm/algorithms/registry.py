"""The algorithm registry: `algo.name` -> what the trainer needs to know.

Each algorithm file builds one `Algorithm` and registers it; importing
`jaxrl_lm.algorithms` imports them all. The trainer asks the registry, never
tests the name itself:

    alg = algorithms.get(cfg.algo.name)
    alg.kind            # "rl" (rollout -> advantages -> clipped loss) | "sft"
    alg.advantages      # (algo section, Trajectory, values | None) -> Advantages
    alg.needs_value     # the policy carries a value head (ppo)
    alg.check(algo)     # the algorithm's own config rules; raises ValueError
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def no_check(algo: Any) -> None:
    del algo


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str  # the value of algo.name
    kind: str  # "rl" | "sft"
    advantages: Callable | None = None  # (algo, traj, values) -> Advantages; rl only
    needs_value: bool = False  # build the policy with a value head
    check: Callable[[Any], None] = no_check  # algo section -> None; ValueError if invalid
    summary: str = ""  # one line for `--help` and errors: the advantage and the paper

    def __post_init__(self):
        if self.kind not in ("rl", "sft"):
            raise ValueError(f"Algorithm {self.name!r}: kind={self.kind!r} must be rl or sft")
        if (self.kind == "rl") != (self.advantages is not None):
            raise ValueError(f"Algorithm {self.name!r}: an rl algorithm has an advantages "
                             f"function, an sft one none")


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
