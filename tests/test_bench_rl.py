"""Smoke tests of `jaxrl-lm bench rollout`, `grpo-step` and `data-grpo` at tiny sizes.

Not timed: they check the benches run end to end through the CLI, print one
JSON object, and that both sides played / trained what they claim.
"""

import json
import math

import pytest

from jaxrl_lm import cli
from jaxrl_lm.bench import rollout as rollout_bench
from jaxrl_lm.config import load_config


def _run(capsys, argv):
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_rollout_bench_quick(capsys):
    r = _run(capsys, ["bench", "rollout", "--quick", "--json"])
    (row,) = r["rows"]
    c = r["settings"]["main"]
    b, turns = row["batch"], c["max_turns"]
    assert (row["setting"], b, c["max_new_tokens"]) == ("main", 4, 4)
    # The main job's own setting, read from its config.
    main = load_config(str(rollout_bench.MAIN_CONFIG))
    assert c["options"] == main.env.options
    assert (c["max_prompt_len"], turns) == (main.env.max_prompt_len, main.env.max_turns)
    for side in ("jitted", "host_loop"):
        s = row[side]
        # Every episode plays at least 3 moves before a win is possible, at most max_turns.
        assert 3 * b <= s["turns"] <= turns * b, (side, s["turns"])
        assert 0.0 <= s["valid_rate"] <= 1.0
        # Per turn: env reward in [-1, 1] plus at most one invalid-answer penalty.
        assert -6.0 * turns <= s["mean_return"] <= 1.0
        assert s["seconds"] > 0 and math.isclose(s["episodes_per_s"], b / s["seconds"])
    host = row["host_loop"]
    assert 0 < host["sample_s"] <= host["seconds"]
    assert math.isclose(row["ratio"], host["seconds"] / row["jitted"]["seconds"])


def test_grpo_step_bench_quick(capsys):
    r = _run(capsys, ["bench", "grpo-step", "--quick", "--breakdown", "--json"])
    c = r["config"]
    assert (c["prompts"], c["group"], c["batch"], c["max_new_tokens"]) == (2, 4, 8, 8)
    ours = r["jaxrl_lm"]
    assert all(math.isfinite(v) for v in ours["final"].values()), ours["final"]
    assert 0.0 <= ours["final"]["reward"] <= 1.0
    assert 1.0 <= ours["final"]["completion_len"] <= c["max_new_tokens"]
    # One update on freshly sampled data: the ratio is 1 up to float noise.
    assert abs(ours["final"]["ratio_mean"] - 1.0) < 1e-3
    assert len(r["trl"]["times"]) == c["steps"] and r["trl"]["seconds"] > 0
    assert ours["generate_s"] > 0 and r["trl"]["generate_s"] > 0
    assert math.isclose(r["ratio"], r["trl"]["seconds"] / ours["seconds"])
    assert r["torch_device"] == ("cuda" if r["backend"] == "gpu" else "cpu")


def test_grpo_step_bench_torch_device_checked(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    assert cli.main(["bench", "grpo-step", "--quick", "--torch-device", "cuda"]) == 2
    assert capsys.readouterr().err == ("error: bench grpo-step --torch-device=cuda: torch sees "
                                       "no CUDA device (use cpu or auto)\n")


def test_data_grpo_bench_quick(capsys):
    r = _run(capsys, ["bench", "data-grpo", "--quick", "--json"])
    c = r["config"]
    assert (c["prompts"], c["group"], c["batch"], c["max_new_tokens"]) == (4, 2, 8, 16)
    ours = r["jaxrl_lm"]
    # the host reward is part of the iteration it is timed in
    assert 0 < ours["host_reward_s"] < ours["seconds"]
    assert math.isclose(ours["host_share"], ours["host_reward_s"] / ours["seconds"])
    assert 0.0 <= ours["reward"] <= 1.0  # math_verify's 0/1, weight 1, nothing else
    assert len(r["trl"]["times"]) == c["steps"] and r["trl"]["seconds"] > 0
    assert math.isclose(r["ratio"], r["trl"]["seconds"] / ours["seconds"])
