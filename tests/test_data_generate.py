"""The built-in reasoning tasks (jaxrl_lm.data.generate): every demo is a
right, well-formed completion (checked by independent means), the countdown
reward function on hand-worked cases, the `jaxrl-lm data` command, and a
countdown file through the whole training path with its host reward."""

from __future__ import annotations

import itertools
import json
import os
import re

import pytest

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.data import generate as G
from jaxrl_lm.reward_functions import countdown, eval_expression


def test_addition_rows_are_distinct_and_their_demos_right():
    rows = G.addition_rows(300, seed=3, digits=2, b_max=9, p_direct=0.5)
    assert len({(r["a"], r["b"]) for r in rows}) == 300
    styles = {"direct": 0, "scratchpad": 0}
    for r in rows:
        a, b = r["a"], r["b"]
        assert 10 <= a <= 99 and 0 <= b <= 9
        assert r["prompt"] == f"Compute {a}+{b}." and r["answer"] == str(a + b)
        work, _, answer = r["demo"].rpartition("#### ")
        assert answer == str(a + b)
        if not work:
            styles["direct"] += 1
            continue
        styles["scratchpad"] += 1
        terms = work.strip().split("=")
        assert len(terms) == b + 1
        pairs = [tuple(map(int, t.split("+"))) for t in terms]
        assert pairs[0] == (a, b) and pairs[-1] == (a + b, 0)
        for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):  # one unit moved per step
            assert (x1, y1) == (x0 + 1, y0 - 1)
    assert 100 < styles["direct"] < 200  # p_direct = 0.5 of 300


def test_addition_covers_every_problem_when_asked_for_all():
    rows = G.addition_rows(100, seed=0, digits=1, b_max=9)
    assert sorted((r["a"], r["b"]) for r in rows) == [(a, b) for a in range(10) for b in range(10)]
    with pytest.raises(ValueError, match=r"rows=101: must lie in 1..100"):
        G.addition_rows(101, digits=1, b_max=9)
    with pytest.raises(ValueError, match="p_direct=2"):
        G.addition_rows(5, p_direct=2)


def _reference_value(expr: str) -> int:
    """Python's own arithmetic on a checked string (no names can get in)."""
    assert re.fullmatch(r"[0-9+\-*() ]+", expr)
    return eval(expr, {"__builtins__": {}})  # noqa: S307


def test_countdown_demos_reach_the_target_with_each_number_once():
    rows = G.countdown_rows(60, seed=1, numbers=3, max_number=9, max_target=50)
    assert len({(tuple(r["numbers"]), r["target"]) for r in rows}) == 60
    for r in rows:
        expr, _, answer = r["demo"].partition(" #### ")
        assert answer == expr
        assert _reference_value(expr) == r["target"] == int(r["answer"])
        assert sorted(int(x) for x in re.findall(r"\d+", expr)) == r["numbers"]
        assert 1 <= r["target"] <= 50 and r["prompt"].startswith(f"Reach {r['target']} with ")


def test_solve_countdown_finds_a_solution_exactly_when_one_exists():
    """Against brute force over every expression tree: +, -, * of 3 numbers."""
    nums = [2, 3, 7]
    reachable = set()
    for a, b, c in itertools.permutations(nums):
        for o1, o2 in itertools.product("+-*", repeat=2):
            reachable.add(_reference_value(f"({a}{o1}{b}){o2}{c}"))
            reachable.add(_reference_value(f"{a}{o1}({b}{o2}{c})"))
    for target in range(-30, 60):
        got = G.solve_countdown(nums, target)
        assert (got is not None) == (target in reachable), target
        if got is not None:
            assert _reference_value(got) == target


@pytest.mark.parametrize("completion, want", [
    ("3*5+7 #### 3*5+7", 1.0),
    ("think #### (7+5)*3-14", 0.0),       # uses 14, not given
    ("#### 7+3*5", 1.0),                  # any order of the numbers
    ("#### 3*5", 0.0),                    # 7 unused
    ("#### 3*5+7+7", 0.0),                # 7 used twice
    ("#### 3*5+7 ", 1.0),                 # spaces around are fine
    ("no marker 3*5+7", 0.0),
    ("#### __import__('os')", 0.0),
    ("#### 2**5", 0.0),                   # no powers
    ("#### (3+5)/(7-7)", 0.0),            # division by zero
    ("#### 44/2 ", 0.0),                  # 44 and 2 not given
    ("#### 3*5+7 #### 7", 0.0),           # the last marker counts
])
def test_countdown_reward_on_hand_worked_cases(completion, want):
    assert countdown(["p"], [completion], numbers=[[3, 5, 7]], target=[22]) == [want]


def test_countdown_reward_uses_exact_fractions():
    assert eval_expression("7/2*2") is not None
    assert countdown(["p"], ["#### 7/2*2"], numbers=[[2, 2, 7]], target=[7]) == [1.0]
    assert countdown(["p"], ["#### 7/2"], numbers=[[2, 7]], target=[3]) == [0.0]
    with pytest.raises(ValueError, match="needs `numbers` and `target`"):
        countdown(["p"], ["#### 1"])


def test_data_command_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "sub" / "add.jsonl"
    assert cli_main(["data", "addition", "--out", str(out), "--rows", "20", "--seed", "2"]) == 0
    rows = [json.loads(x) for x in open(out)]
    assert rows == G.addition_rows(20, seed=2)
    assert cli_main(["data", "countdown", "--out", str(tmp_path / "c.jsonl"), "--rows", "5"]) == 0
    assert cli_main(["data", "addition", "--out", str(out), "--rows", "0"]) == 2
    assert "error: rows=0: must lie in 1..900" in capsys.readouterr().err
    assert cli_main(["data", "addition", "--out", str(tmp_path), "--rows", "3"]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_countdown_trains_through_the_file_path_with_its_reward(tmp_path):
    """A generated countdown file, the countdown host reward as the training
    reward and as the evaluation's grader, a demo warm-up: the job runs end to
    end and the logged reward is the function's."""
    import yaml

    path = G.write_jsonl(G.countdown_rows(40, seed=0), str(tmp_path / "cd.jsonl"))
    cfg = {"algo": {"name": "grpo", "group_size": 4},
           "rollout": {"max_new_tokens": 24, "stop_at_newline": False},
           "shaping": {"invalid_penalty": 0.0, "standin_reward": False},
           "env": {"max_prompt_len": 48},
           "warmup": {"steps": 2, "batch_size": 8},
           "train": {"steps": 2, "batch_size": 8, "max_len": 72, "progress": False},
           "data": {"path": path, "eval_fraction": 0.2, "grader": "countdown"},
           "eval": {"samples": 2},
           "reward": {"answer_weight": 0.0, "functions": [{"fn": "countdown"}]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    assert cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    after = summary["after"]["held-out"]
    assert after["episodes"] == 8 and {"pass@1", "pass@2", "sampled_pass@1"} <= set(after)
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    for r in lines:  # answer_weight 0: the episode reward is the function's
        assert r["reward"] == pytest.approx(r["reward/countdown"], abs=1e-6)
    assert os.path.isdir(os.path.join(out, "warmup", "checkpoints"))
