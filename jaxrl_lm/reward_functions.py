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
    countdown     1.0 when the expression after the completion's last "####"
                  uses each of the `numbers` column's numbers exactly once
                  with + - * / and parentheses and equals the `target`
                  column, else 0.0 (jaxrl_lm.data.generate's countdown task)

A function that raises, returns the wrong number of values, or a value that
is not a finite number stops the run with a message naming the function and
the row; checkpoints and logs already written stay as they are.
"""

from __future__ import annotations

import ast
import importlib
import math
import os
import re
import sys
from collections import Counter
from fractions import Fraction
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


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def eval_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, the integer literals used) of an arithmetic expression of
    non-negative integers, + - * / and parentheses; None for anything else
    (names, calls, powers, unary signs, division by zero, over 64 characters)."""
    if len(text) > 64 or not re.fullmatch(r"[0-9+\-*/() ]+", text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    used: list[int] = []

    def value(node) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not allowed")

    try:
        return value(tree), used
    except (ValueError, ZeroDivisionError):
        return None


def countdown(prompts: list[str], completions: list[str], numbers: list[Any] | None = None,
              target: list[Any] | None = None, **columns) -> list[float]:
    """1.0 where the expression after the last "####" reaches `target` using
    each of `numbers` exactly once (module doc)."""
    if numbers is None or target is None:
        raise ValueError("reward function countdown needs `numbers` and `target` columns")
    out = []
    for completion, nums, goal in zip(completions, numbers, target):
        _, marker, expr = completion.rpartition("####")
        got = eval_expression(expr.strip()) if marker else None
        ok = got is not None and got[0] == Fraction(int(goal)) and \
            Counter(got[1]) == Counter(int(n) for n in nums)
        out.append(float(ok))
    return out


BUILTIN: dict[str, RewardFn] = {"math_verify": math_verify, "countdown": countdown}


def resolve(spec: str) -> RewardFn:
    """The function a config names: a built-in name, or `module.attr` / `module:attr`."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward function {spec!r}: give a built-in ({', '.join(BUILTIN)}) "
                         f"or an import path module.function")
    if os.getcwd() not in sys.path:  # my_rewards.py in the working directory imports
        sys.path.append(os.getcwd())
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


def _call_chunk(spec: str, cwd: str, prompts: list[str], completions: list[str],
                columns: dict[str, list]) -> np.ndarray:
    """A worker's part of `RewardPool.call`: resolve `spec` there, then `call`."""
    if cwd not in sys.path:
        sys.path.append(cwd)
    return call(resolve(spec), spec, prompts, completions, columns)


class RewardPool:
    """Host reward functions computed by `workers` processes, each on a
    contiguous slice of the batch (`reward.workers`): for slow functions
    (math-verify on long completions) on a host with cores to spare. The
    processes are started once ("spawn": safe beside JAX's threads) and import
    the functions by name; the values and the error messages (rows counted in
    the whole batch) are those of `call`.
    """

    def __init__(self, workers: int):
        import concurrent.futures
        import multiprocessing

        if workers < 1:
            raise ValueError(f"workers={workers}: must be >= 1")
        self.workers = workers
        self.pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))

    def call(self, spec: str, prompts: list[str], completions: list[str],
             columns: dict[str, list]) -> np.ndarray:
        n = len(completions)
        cuts = np.linspace(0, n, self.workers + 1).astype(int)
        parts = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        futures = [self.pool.submit(_call_chunk, spec, os.getcwd(), prompts[a:b],
                                    completions[a:b], {k: v[a:b] for k, v in columns.items()})
                   for a, b in parts]
        out = []
        for (a, _), f in zip(parts, futures):
            try:
                out.append(f.result())
            except ValueError as e:  # name the row in the whole batch
                msg = re.sub(r"row (\d+)", lambda m: f"row {a + int(m.group(1))}", str(e), count=1)
                raise ValueError(msg) from None
        return np.concatenate(out) if out else np.zeros(0)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
