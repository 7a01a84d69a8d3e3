"""Built-in reasoning tasks, written as JSONL prompt datasets that the data
path reads like any user's file.

    jaxrl-lm data addition --out data/addition.jsonl --rows 900 --seed 0
    jaxrl-lm data countdown --out data/countdown.jsonl --rows 2000 --numbers 3

Each row has `prompt`, `answer` (what the verifier grades against) and `demo`
(a worked completion, for `warmup.steps` on a data run), plus the task's own
columns. A completion ends with its answer after the "####" marker.

addition   "Compute 37+5." -> a scratchpad that moves one unit from b to a
           until b is 0, local steps a tiny character model can learn:
               37+5=38+4=39+3=40+2=41+1=42+0 #### 42
           or, with probability `p_direct`, the bare "#### 42". a has
           `digits` digits, b lies in 0..b_max; rows are distinct problems
           (all of them, shuffled, when `rows` is at least their number).
countdown  "Reach 22 with 3 5 7." -> an expression that uses each given
           number exactly once with + - * and parentheses and equals the
           target: "3*5+7 #### 3*5+7". Graded by the `countdown` reward
           function (jaxrl_lm.reward_functions), which evaluates the
           expression; the answer column holds the target.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser

TASKS = ("addition", "countdown")


def addition_scratchpad(a: int, b: int) -> str:
    return "=".join(f"{a + k}+{b - k}" for k in range(b + 1))


def addition_rows(rows: int, *, seed: int = 0, digits: int = 2, b_max: int = 9,
                  p_direct: float = 0.5) -> list[dict]:
    """`rows` distinct problems a + b (see the module doc)."""
    if not 1 <= digits <= 6:
        raise ValueError(f"digits={digits!r}: must lie in 1..6")
    if not 0 <= b_max <= 50:
        raise ValueError(f"b_max={b_max!r}: must lie in 0..50 (the scratchpad has b + 1 steps)")
    if not 0.0 <= p_direct <= 1.0:
        raise ValueError(f"p_direct={p_direct!r}: must lie in [0, 1]")
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    pairs = [(a, b) for a in range(lo, 10**digits) for b in range(b_max + 1)]
    _check_rows(rows, len(pairs), "addition problems")
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(pairs))[:rows]:
        a, b = pairs[i]
        direct = rng.random() < p_direct
        work = "" if direct else addition_scratchpad(a, b) + " "
        out.append({"prompt": f"Compute {a}+{b}.", "answer": str(a + b),
                    "demo": f"{work}#### {a + b}", "a": a, "b": b})
    return out


_OPS = ("+", "-", "*")


def _expressions(nums: tuple[int, ...]):
    """(value, text) of every expression using each of `nums` exactly once,
    left to right in every order and bracketing, with + - *."""
    if len(nums) == 1:
        yield nums[0], str(nums[0])
        return
    for split in range(1, len(nums)):
        for lv, lt in _expressions(nums[:split]):
            for rv, rt in _expressions(nums[split:]):
                lt_ = lt if split == 1 else f"({lt})"
                rt_ = rt if len(nums) - split == 1 else f"({rt})"
                yield lv + rv, f"{lt_}+{rt_}"
                yield lv - rv, f"{lt_}-{rt_}"
                yield lv * rv, f"{lt_}*{rt_}"


def solve_countdown(numbers: list[int], target: int) -> str | None:
    """The shortest expression (fewest characters) reaching `target`, or None."""
    best = None
    for order in set(itertools.permutations(numbers)):
        for value, text in _expressions(order):
            if value == target and (best is None or len(text) < len(best)):
                best = text
    return best


def countdown_rows(rows: int, *, seed: int = 0, numbers: int = 3, max_number: int = 9,
                   max_target: int = 50) -> list[dict]:
    """`rows` solvable puzzles with `numbers` numbers in 1..max_number and a
    target in 1..max_target (see the module doc)."""
    if not 2 <= numbers <= 4:
        raise ValueError(f"numbers={numbers!r}: must lie in 2..4")
    if not 2 <= max_number <= 100:
        raise ValueError(f"max_number={max_number!r}: must lie in 2..100")
    if max_target < 1:
        raise ValueError(f"max_target={max_target!r}: must be >= 1")
    rng = np.random.default_rng(seed)
    out, seen, tries = [], set(), 0
    while len(out) < rows:
        tries += 1
        if tries > 200 * rows + 1000:
            raise ValueError(f"rows={rows}: found only {len(out)} distinct solvable puzzles "
                             f"with numbers={numbers}, max_number={max_number}, "
                             f"max_target={max_target}")
        nums = sorted(int(x) for x in rng.integers(1, max_number + 1, numbers))
        values = sorted({v for o in set(itertools.permutations(nums))
                         for v, _ in _expressions(o) if 1 <= v <= max_target})
        if not values:
            continue
        target = int(values[rng.integers(len(values))])
        if (tuple(nums), target) in seen:
            continue
        seen.add((tuple(nums), target))
        expr = solve_countdown(nums, target)
        out.append({"prompt": f"Reach {target} with {' '.join(map(str, nums))}.",
                    "answer": str(target), "demo": f"{expr} #### {expr}",
                    "numbers": nums, "target": target})
    return out


def _check_rows(rows: int, available: int, what: str) -> None:
    if not 1 <= rows <= available:
        raise ValueError(f"rows={rows}: must lie in 1..{available} (the distinct {what} "
                         f"of these options)")


def write_jsonl(rows: list[dict], path: str) -> str:
    """Write `rows` to `path` (folders created), atomically: a crash leaves
    either the old file or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """`jaxrl-lm data TASK --out FILE [--rows N] [--seed S] [task options]`."""
    p = ArgumentParser(prog="jaxrl-lm data",
                       description="Write a built-in reasoning task as a JSONL "
                                   "prompt dataset (prompt, answer, demo columns).")
    p.add_argument("task", choices=TASKS)
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digits", type=int, default=2, help="addition: digits of a")
    p.add_argument("--b-max", type=int, default=9, help="addition: b lies in 0..b_max")
    p.add_argument("--p-direct", type=float, default=0.5,
                   help="addition: share of demos answered without the scratchpad")
    p.add_argument("--numbers", type=int, default=3, help="countdown: numbers per puzzle")
    p.add_argument("--max-number", type=int, default=9, help="countdown: numbers lie in 1..N")
    p.add_argument("--max-target", type=int, default=50, help="countdown: targets in 1..N")
    args = p.parse_args(argv)
    try:
        if args.task == "addition":
            rows = addition_rows(args.rows, seed=args.seed, digits=args.digits,
                                 b_max=args.b_max, p_direct=args.p_direct)
        else:
            rows = countdown_rows(args.rows, seed=args.seed, numbers=args.numbers,
                                  max_number=args.max_number, max_target=args.max_target)
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r} is a folder; give a file name")
        write_jsonl(rows, args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(rows)} {args.task} rows")
    return 0
