"""Host reward functions on decoded text, in TRL's form:

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float]

`prompts` and `completions` are the batch's rendered prompts and decoded
completions (one entry per sampled completion, the G of a group together);
`columns` holds the dataset's other columns, one value per completion. Named
in the config by import path (`reward.functions: [{fn: my_pkg.rewards.length,
weight: 0.5}]`, the module imported like `imports`) or by a built-in name:

    math_verify   1.0 when the completion's final answer equals the `answer`
                  column as mathematics (the math-verify package: LaTeX,
                  fractions, sets), else 0.0

A function that raises, returns the wrong number of values, or a value that
is not a finite number stops the run with a message naming the function and
the row; checkpoints and logs already written stay as they are.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import numpy as np

RewardFn = Callable[..., list]


def math_verify(prompts: list[str], completions: list[str], answer: list[Any] | None = None,
                **columns) -> list[float]:
    """1.0 where math-verify finds the completion's answer equal to `answer`."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ValueError("reward function math_verify needs the math-verify package "
                         "(pip install math-verify)") from None
    if answer is None:
        raise ValueError("reward function math_verify needs an `answer` column")
    out = []
    for completion, ref in zip(completions, answer):
        gold = parse(str(ref))
        out.append(float(bool(gold) and verify(gold, parse(completion))))
    return out


BUILTIN: dict[str, RewardFn] = {"math_verify": math_verify}


def resolve(spec: str) -> RewardFn:
    """The function a config names: a built-in name, or `module.attr` / `module:attr`."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward function {spec!r}: give a built-in ({', '.join(BUILTIN)}) "
                         f"or an import path module.function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        raise ValueError(f"reward function {spec!r}: cannot import {module!r}: {e}") from None
    except AttributeError:
        raise ValueError(f"reward function {spec!r}: module {module!r} has no {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"reward function {spec!r} is not callable")
    return fn


def call(fn: RewardFn, name: str, prompts: list[str], completions: list[str],
         columns: dict[str, list]) -> np.ndarray:
    """f64[B] of `fn` on the batch, checked: a raise, a wrong length or a
    non-finite value is a ValueError naming `name` and the row."""
    try:
        got = fn(prompts, completions, **columns)
    except Exception as e:  # noqa: BLE001  (the user's function failed)
        raise ValueError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
    try:
        values = list(got)
    except TypeError:
        raise ValueError(f"reward function {name!r} returned {type(got).__name__}, "
                         f"expected a list of {len(completions)} floats") from None
    if len(values) != len(completions):
        raise ValueError(f"reward function {name!r} returned {len(values)} values for "
                         f"{len(completions)} completions")
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"reward function {name!r}: row {i} is {v!r}, not a number") from None
        if not math.isfinite(out[i]):
            raise ValueError(f"reward function {name!r}: row {i} is {out[i]} (completion "
                             f"{completions[i][:60]!r})")
    return out
