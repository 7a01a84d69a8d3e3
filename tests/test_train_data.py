"""RL on a prompt dataset (data.path): the PromptTask grades completions with
the verifier inside the rollout; `jaxrl-lm train --data.path` runs the job
end to end with a held-out pass@1 before and after; bad data is an error
before anything compiles."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import ConfigError, from_dict
from jaxrl_lm.models import default_policy
from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.rollout import make_rollout
from jaxrl_lm.train import tasks

ROWS = [{"question": f"What is {a}+{b}?", "answer": f"The sum is {a + b}. #### {a + b}"}
        for a in range(4) for b in range(4)]
BASE = {"algo": {"name": "grpo", "group_size": 4},
        "rollout": {"max_new_tokens": 8, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False},
        "env": {"max_prompt_len": 32},
        "train": {"steps": 2, "batch_size": 8, "max_len": 40, "progress": False},
        "data": {"prompt_column": "question", "eval_fraction": 0.25}}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def gsm8k_answer(answer: str) -> str:
    """The reference after GSM8K's '#### ' (what the verifier compares against)."""
    return answer.split("####")[-1].strip()


@pytest.fixture(scope="module")
def tok():
    return default_policy(0)[1]


def test_prompt_task_grades_with_the_rows_reference(tmp_path, tok):
    rows = [dict(r, answer=gsm8k_answer(r["answer"])) for r in ROWS]
    cfg = from_dict({**BASE, "data": {**BASE["data"], "path": write_rows(tmp_path / "d.jsonl", rows)}})
    task, text = tasks.make_task(cfg, tok)
    assert task is text and len(task) == 12 and tasks.max_turns(cfg) == 1
    held, _ = tasks.make_task(cfg, tok, held_out=True)
    assert len(held) == 4
    row = 5
    want = task.prompts.columns["answer"][row]
    state = task.init_task(jax.random.key(0), jnp.int32(row))
    ids, n = task.render(state)
    assert task.prompts.texts[row].startswith("User: What is")
    assert ids[:n].tolist() == encode(tok, task.prompts.texts[row])
    for text, action, found in ((f"so #### {want}", 1, True), (f"#### {int(want) + 1}", 0, True),
                                (f"the answer is {want}", None, False)):
        comp = np.zeros(16, np.int32)
        t = encode(tok, text)
        comp[: len(t)] = t
        a, v = task.grade(state, jnp.asarray(comp), jnp.int32(len(t)))
        assert bool(v) == found, text
        if found:
            assert int(a) == action, text
    new = task.step(state, jnp.int32(1), jax.random.key(0))
    assert float(new.reward) == 1.0 and bool(new.done)


def test_rollout_on_a_prompt_task_plays_the_given_rows(tmp_path, tok):
    """One episode per row; an unanswered completion earns 0 (standin_reward
    off); rows passed as tasks are the rows played."""
    cfg = from_dict({**BASE, "data": {**BASE["data"], "path": write_rows(tmp_path / "d.jsonl", ROWS)}})
    task, _ = tasks.make_task(cfg, tok)
    model, _ = default_policy(0)
    play = make_rollout(task, task, num_groups=3, group_size=2, max_new_tokens=6,
                        stop_tokens=(tok.eos_token_id,), invalid_penalty=0.0, standin_reward=False)
    rows = jnp.asarray([7, 0, 3])
    from flax import nnx

    traj = play(*nnx.split(model), jax.random.key(1), rows)
    assert traj.states.row[0].tolist() == [7, 7, 0, 0, 3, 3]
    np.testing.assert_array_equal(traj.prompt[0, 0], task.prompts.ids[7])
    unanswered = ~np.asarray(traj.valid[0])
    assert (np.asarray(traj.env_reward[0])[unanswered] == 0).all()


def test_cli_trains_on_a_jsonl_and_reports_held_out_pass_at_1(tmp_path, capsys):
    data = write_rows(tmp_path / "math.jsonl", ROWS)
    cfg = tmp_path / "run.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(BASE))
    out = str(tmp_path / "run")
    assert cli_main(["train", "--config", str(cfg), "--data.path", data, "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["before"]) == set(summary["after"]) == {"held-out"}
    res = summary["after"]["held-out"]
    assert res["episodes"] == 4 and 0.0 <= res["pass@1"] <= res["answered"] <= 1.0
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["turns"] == 1.0 for r in lines)
    assert "pass@1" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "hf", "model.safetensors"))


@pytest.mark.parametrize("rows, extra, message", [
    ([{"question": "1+1?"}] * 8, {}, "data (train rows): column 'answer' missing in row 0"),
    ([], {}, "holds no rows"),
    ([{"question": "1+1?", "answer": "2"}], {}, "data: eval_fraction=0.25 of 1 rows leaves no "
                                                  "train or no eval row"),
    # "User: " (6) + 40 + "\n" (1) + "Assistant:" (10) = 57 characters, one token each
    ([{"question": "x" * 40, "answer": "1"}] * 8, {}, "row 0: its prompt is 57 tokens, longer than "
                                                      "env.max_prompt_len=32; raise the limit or "
                                                      "drop such rows (data.on_overlong: drop)"),
    (ROWS, {"warmup": {"steps": 3}}, "data.demo_column='demo': the warm-up imitates this "
                                     "column, but the rows give it no such column"),
    (ROWS, {"algo": {"name": "sft"}}, "data.demo_column='demo'"),
    # "User: What is a+b?\nAssistant:" (29) + 9 x "#### 1" (54) + EOS = 84, one token a character
    ([dict(r, demo="#### 1" * 9) for r in ROWS], {"warmup": {"steps": 3}},
     "prompt + demo + EOS is 84 tokens, longer than a training row's 40"),
    (ROWS, {"data": {"grader": "nowhere.fn"}}, "data.grader: reward function 'nowhere.fn'"),
    (ROWS, {"data": {"marker": "###"}}, "data.marker='###': must be one of"),
])
def test_bad_data_is_an_error_before_compiling(tmp_path, capsys, rows, extra, message):
    import yaml

    cfg = {**BASE, **extra, "data": {**BASE["data"], **extra.get("data", {}),
                                     "path": write_rows(tmp_path / "d.jsonl", rows)}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code = cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_data_section_errors():
    with pytest.raises(ConfigError, match="data.eval_path=.*needs data.path"):
        from_dict({"data": {"eval_path": "x.jsonl"}})
    with pytest.raises(ConfigError, match="data.eval_fraction=1.0: must lie in"):
        from_dict({"data": {"eval_fraction": 1.0}})


REWARDS_MODULE = '''
import math

calls = []


def n_chars(prompts, completions, answer, **columns):
    assert len(prompts) == len(completions) == len(answer)
    return [len(c) / 8 for c in completions]


def boom(prompts, completions, **columns):
    calls.append(1)
    if len(calls) > 1:
        raise RuntimeError("second batch")
    return [0.0] * len(completions)


def short(prompts, completions, **columns):
    return [0.0]


def nan(prompts, completions, **columns):
    return [math.nan] * len(completions)
'''


def _host_run(tmp_path, functions, steps=2, ckpt_every=1):
    import yaml

    (tmp_path / "myrew.py").write_text(REWARDS_MODULE)
    data = write_rows(tmp_path / "math.jsonl", ROWS)
    cfg = {**BASE, "imports": ["myrew"], "reward": {"functions": functions},
           "data": {**BASE["data"], "path": data},
           "train": {**BASE["train"], "steps": steps, "ckpt_every": ckpt_every}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # plugins are found in the working directory
    try:
        return cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--out", out]), out
    finally:
        os.chdir(cwd)


def test_host_reward_functions_are_weighted_added_and_logged(tmp_path):
    """reward.functions: a user's function (imported from the working directory)
    gets the decoded batch and the rows' columns; its weighted value is added
    to the episode reward, and each part's mean is logged."""
    code, out = _host_run(tmp_path, [{"fn": "myrew.n_chars", "weight": 0.5}])
    assert code == 0
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    for r in rows:
        assert r["reward/myrew.n_chars"] > 0
        # invalid_penalty 0: the episode reward is the answer reward plus 0.5 x the function
        assert r["reward"] == pytest.approx(r["reward/answer"] + 0.5 * r["reward/myrew.n_chars"],
                                            rel=1e-5)


@pytest.mark.parametrize("fn, message", [
    ("myrew.boom", "reward function 'myrew.boom' raised RuntimeError: second batch"),
    ("myrew.short", "reward function 'myrew.short' returned 1 values for 8 completions"),
    ("myrew.nan", "reward function 'myrew.nan': row 0 is nan"),
])
def test_a_failing_reward_function_stops_the_run_and_keeps_what_was_written(tmp_path, fn, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _host_run(tmp_path, [{"fn": fn}])
    metrics = os.path.join(tmp_path, "run", "metrics.jsonl")
    if fn == "myrew.boom":  # the first iteration finished: its log line and checkpoint stay
        assert [json.loads(x)["step"] for x in open(metrics)] == [1]
        assert os.path.isdir(os.path.join(tmp_path, "run", "checkpoints", "1"))


def test_unknown_reward_function_is_an_error_before_compiling(tmp_path, capsys):
    code, _ = _host_run(tmp_path, [{"fn": "myrew.missing"}])
    assert code == 2
    assert "reward function 'myrew.missing': module 'myrew' has no 'missing'" in capsys.readouterr().err
    code, _ = _host_run(tmp_path, [{"fn": "nowhere.fn"}])
    assert code == 2 and "cannot import 'nowhere'" in capsys.readouterr().err


def test_math_verify_builtin_on_a_gsm8k_shaped_fixture():
    from jaxrl_lm.reward_functions import math_verify

    answer = ["Natalia sold 48 clips in April and 24 in May. #### 72"] * 4
    got = math_verify(["How many clips?"] * 4,
                      ["48 + 24 = 72, so #### 72", "\\boxed{71}", "The total is $\\frac{144}{2}$",
                       "I don't know"], answer=answer)
    assert got == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.slow
def test_gsm8k_fixture_through_the_full_path_with_math_verify(tmp_path):
    """GSM8K-shaped rows (question / answer ending '#### n'): math_verify is the
    training reward (the verifier's weight 0) and the evaluation's grader;
    `jaxrl-lm eval --data held-out` then re-grades the exported policy the same
    way, with pass@k, into a summary file."""
    import yaml

    data = write_rows(tmp_path / "gsm8k.jsonl", ROWS)
    cfg = {**BASE, "reward": {"answer_weight": 0.0, "functions": [{"fn": "math_verify"}]},
           "data": {**BASE["data"], "path": data, "grader": "math_verify"},
           "eval": {"samples": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "run")
    assert cli_main(["train", "--config", str(tmp_path / "run.yaml"), "--out", out]) == 0
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    for r in rows:  # the episode reward is math_verify's 0/1 alone
        assert r["reward"] == pytest.approx(r["reward/math_verify"], abs=1e-6)
        assert 0.0 <= r["reward/math_verify"] <= 1.0
    after = json.load(open(os.path.join(out, "summary.json")))["after"]["held-out"]
    assert {"pass@1", "pass@2", "sampled_pass@1", "format"} <= set(after)
    summary = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", out, "--data", "held-out", "--samples", "2",
                     "--summary", str(summary)]) == 0
    again = json.load(open(summary))
    assert again["settings"]["data"]["grader"] == "math_verify"
    # the same policy, rows, grader and seed: the same greedy pass@1
    assert again["after"]["pass@1"] == pytest.approx(after["pass@1"])
    assert again["after"]["episodes"] == after["episodes"] == 4
