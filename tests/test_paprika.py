"""PAPRIKA: scores, pair selection, the pairs file in the preference loader,
min-p generation of n trajectories per task, and the pipeline end to end
with resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from jaxrl_lm.config import ConfigError
from jaxrl_lm.data import read_rows
from jaxrl_lm.data.preference import build_pairs
from jaxrl_lm.models import default_policy
from jaxrl_lm.paprika.generate import GenerateSection, generate, score
from jaxrl_lm.paprika.pairs import make_pairs, select_pairs, write_pairs
from jaxrl_lm.paprika.pipeline import load, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "launch", "configs", "paprika.yaml")


def test_score_counts_a_failure_as_max_turns():
    s = score(np.array([True, False, True]), np.array([2, 1, 5]), np.array([1.0, 0.0, 1.0]),
              max_turns=5)
    assert s.tolist() == [-2.0, -5.0, -5.0]
    r = score(np.array([True, False]), np.array([3, 3]), np.array([1.0, 0.0]), max_turns=5,
              by_reward=True)
    assert r.tolist() == [1.0, 0.0]


def test_select_pairs_best_against_a_random_lower_one():
    scores = np.array([-3.0, -1.0, -5.0, -1.0, -2.0])
    seen = set()
    for seed in range(40):
        best, rej = select_pairs(scores, np.random.default_rng(seed))
        assert best == 1  # the first of the top score
        assert scores[rej] < scores[best]
        seen.add(rej)
    assert seen == {0, 2, 4}  # every lower one can be drawn, the tied best never
    assert select_pairs(np.array([-2.0, -2.0, -2.0]), np.random.default_rng(0)) is None


def record(group, task, ep, score_, answers):
    steps = [{"prompt": f"task {task} obs {i}\n", "completion": f"{a}\n"}
             for i, a in enumerate(answers)]
    return {"group": group, "task": task, "episode": ep, "steps": steps, "score": score_}


def test_make_pairs_skips_tied_tasks_and_scores_each_turn_in_its_own_context(tmp_path):
    _, tok = default_policy(0)
    records = [record("g", 0, 0, -2.0, ["ACTION=1", "ACTION=2"]),
               record("g", 0, 1, -3.0, ["ACTION=0", "ACTION=3", "ACTION=4"]),
               record("g", 1, 0, -3.0, ["ACTION=1"]),  # task 1: all alike, no pair
               record("g", 1, 1, -3.0, ["ACTION=2"])]
    rows = make_pairs(records, seed=0)
    assert len(rows) == 1 and rows[0]["task"] == 0
    path = write_pairs(rows, str(tmp_path / "pairs"), {"made_by": "test"})
    assert json.load(open(tmp_path / "pairs" / "config.json")) == {"made_by": "test"}
    loaded = read_rows(path)
    assert loaded[0]["prompt"] == "task 0 obs 0\n"
    pairs = build_pairs(loaded, tok, max_len=64)
    assert pairs.tokens.shape == (1, 2, 3, 64)  # 3 turn rows: the longer side's turns
    for side, answers in ((0, ["ACTION=1", "ACTION=2"]), (1, ["ACTION=0", "ACTION=3", "ACTION=4"])):
        for t in range(3):
            row, m = pairs.tokens[0, side, t], pairs.mask[0, side, t]
            if t >= len(answers):  # the shorter side's missing turn: nothing scored
                assert m.sum() == 0
                continue
            scored = tok.decode(row[m > 0].tolist())
            context = tok.decode(row[: int(np.argmax(m > 0))].tolist())
            assert scored == f"{answers[t]}\n"
            assert context == f"task 0 obs {t}\n"  # that turn's prompt alone, no history


def test_turn_pair_logps_are_the_sum_of_independent_turns():
    """pair_logps on [B, 2, K, L] equals each turn scored as its own sequence by
    a float64 numpy log-softmax of the model's logits, summed over turns."""
    import jax.numpy as jnp

    from jaxrl_lm.train.preference import pair_logps

    model, tok = default_policy(0)
    rows = make_pairs([record("g", 0, 0, -1.0, ["ACTION=1", "ACTION=2"]),
                       record("g", 0, 1, -3.0, ["ACTION=7"])], seed=0)
    pairs = build_pairs(rows, tok, max_len=32)
    got, n_tok = pair_logps(model, jnp.asarray(pairs.tokens), jnp.asarray(pairs.mask))
    want = np.zeros(2)
    for side, answers in ((0, ["ACTION=1", "ACTION=2"]), (1, ["ACTION=7"])):
        for t, a in enumerate(answers):
            p = list(tok.encode(f"task 0 obs {t}\n", add_special_tokens=False))
            c = list(tok.encode(f"{a}\n", add_special_tokens=False))
            ids = np.asarray([p + c])
            logits = np.asarray(model(jnp.asarray(ids), jnp.arange(ids.shape[1])[None]),
                                np.float64)[0]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                   keepdims=True)) - logits.max(-1, keepdims=True)
            want[side] += sum(logp[len(p) + j - 1, c[j]] for j in range(len(c)))
    np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-5, atol=1e-4)
    assert np.asarray(n_tok[0]).tolist() == [18.0, 9.0]  # "ACTION=k\n" is 9 characters


def test_generate_gives_n_trajectories_per_task():
    model, tok = default_policy(0)
    gen = GenerateSection(groups=({"name": "best_arm", "options": {"k": 2, "budget": 1}},),
                          tasks=2, trajectories=3, max_new_tokens=6, max_turns=2,
                          max_prompt_len=224)
    recs = generate(gen, model, tok)
    assert [(r["task"], r["episode"]) for r in recs] == [(t, e) for t in range(2)
                                                        for e in range(3)]
    for r in recs:
        assert 1 <= r["turns"] <= 2 and r["score"] in (0.0, 1.0)  # best_arm: its reward
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * r["turns"]
        assert len(r["steps"]) == r["turns"]
        for s in r["steps"]:  # the ids are what the policy saw and wrote; texts decode them
            assert tok.decode(s["prompt_ids"]) == s["prompt"]
            assert tok.decode(s["completion_ids"]) == s["completion"]
            assert 1 <= len(s["completion_ids"]) <= 6
    # the episodes of a task share it: the same first observation (arms not shown
    # until pulled, so it is the same text for every task of this env)
    firsts = {r["messages"][0]["content"] for r in recs}
    assert len(firsts) == 1 and firsts.pop().startswith("Best arm: 2 arms")
    # greedy: one deterministic answer per task state
    again = generate(gen, model, tok, greedy=True, trajectories=2)
    assert len(again) == 4 and again[0]["steps"][0] == again[1]["steps"][0]


def test_generate_section_checks_the_groups():
    with pytest.raises(ConfigError, match="generate.groups.0.name='nope'"):
        GenerateSection(groups=({"name": "nope"},))
    with pytest.raises(ConfigError, match="generate.trajectories=0"):
        GenerateSection(groups=({"name": "best_arm"},), trajectories=0)
    with pytest.raises(ConfigError, match="generate.groups.1.name='best_arm': named twice"):
        GenerateSection(groups=({"name": "best_arm"}, {"name": "best_arm", "options": {"k": 2}}))


def tiny_config(tmp_path, **changes) -> str:
    cfg = yaml.safe_load(open(PRESET))
    assert len(cfg["generate"]["groups"]) >= 4
    cfg["warmup"]["steps"] = 4
    cfg["generate"].update(tasks=2, trajectories=4)
    cfg["eval"]["episodes"] = 4
    for stage in ("sft", "rpo"):
        cfg[stage]["train"].update(steps=2, ckpt_every=2)
    cfg.update(changes)
    path = tmp_path / "paprika.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    pc, out = load(tiny_config(tmp_path, rounds=2)), str(tmp_path / "run")
    info = run(pc, out)
    assert info["round1/generate"]["episodes"] == 4 * 2 * 4  # groups x tasks x trajectories
    assert sum(info["round2/generate"]["tasks"].values()) == 8  # the same budget, split by UCB
    assert 1 <= info["round1/pairs"]["pairs"] <= 8
    for r in (1, 2):
        for stage in ("sft", "rpo"):
            assert os.path.exists(os.path.join(out, f"round{r}", stage, "hf",
                                               "model.safetensors"))
        assert np.isfinite(info[f"round{r}/rpo"]["train"]["loss"])
    said = capsys.readouterr().out
    assert "before" in said and "SFT + RPO" in said and "battleship" in said
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["eval"]) == {"before", "SFT", "SFT + RPO"}
    assert summary["eval"]["SFT"]["battleship"]["episodes"] == 4
    # a finished run refuses to start over; with --resume every stage is skipped
    with pytest.raises(ConfigError, match="add --resume"):
        run(pc, out)
    stamp = os.path.getmtime(os.path.join(out, "round1", "sft", "stage.json"))
    os.remove(os.path.join(out, "round2", "rpo", "stage.json"))  # unfinished, checkpoints kept
    again = run(pc, out, resume=True)
    said = capsys.readouterr().out
    for s in ("warmup", "before", "round1/generate", "round1/sft", "round2/sft"):
        assert f"{s}: finished, skipped" in said
    assert os.path.getmtime(os.path.join(out, "round1", "sft", "stage.json")) == stamp
    assert again["round2/rpo"]["resumed_from"] == 2  # its last checkpoint: nothing left
    assert again["round2/rpo"]["train"]["loss"] == pytest.approx(info["round2/rpo"]["train"]["loss"])


@pytest.mark.slow
def test_train_cli_runs_a_paprika_config_and_dpo_trains_on_its_pairs(tmp_path, capsys):
    """`jaxrl-lm train --config paprika.yaml` runs the pipeline; `--algo.name dpo`
    then trains on the pairs file it wrote (turn pairs)."""
    from jaxrl_lm.cli import main

    cfg, out = tiny_config(tmp_path), str(tmp_path / "run")
    assert main(["train", "--config", cfg, "--out", out]) == 0
    assert main(["train", "--config", cfg, "--out", str(tmp_path / "x"), "--train.steps",
                 "3"]) == 2  # not a paprika key: an error line, nothing run
    assert "unknown key(s) train" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    pairs = os.path.join(out, "round1", "pairs", "pairs.jsonl")
    run_dir = str(tmp_path / "dpo")
    assert main(["train", "--out", run_dir, "--algo.name", "dpo", "--data.path", pairs,
                 "--data.eval_fraction", "0", "--train.steps", "2", "--train.batch_size", "8",
                 "--train.max_len", "272", "--train.progress", "false"]) == 0
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["pairs"]["train"] == len(read_rows(pairs))


@pytest.mark.slow
def test_leave_one_out_trains_without_each_group_and_evaluates_all(tmp_path):
    from jaxrl_lm.paprika.pipeline import leave_one_out

    data = yaml.safe_load(open(tiny_config(tmp_path)))
    data["generate"]["groups"] = data["generate"]["groups"][:3]
    data["sft"]["train"]["steps"] = data["rpo"]["train"]["steps"] = 1
    data["sft"]["train"]["ckpt_every"] = data["rpo"]["train"]["ckpt_every"] = 1
    from jaxrl_lm.paprika.pipeline import from_data

    pc, out = from_data(data), str(tmp_path / "loo")
    table = leave_one_out(pc, out, say=lambda s: None)
    names = [g["name"] for g in data["generate"]["groups"]]
    assert list(table) == names
    for name in names:
        gen = json.load(open(os.path.join(out, f"without_{name}", "round1", "generate",
                                          "stage.json")))
        assert name not in gen["tasks"] and len(gen["tasks"]) == 2
        assert set(table[name]) == {"before", "SFT", "SFT + RPO"}
        assert table[name]["SFT + RPO"]["episodes"] == 4
    assert json.load(open(os.path.join(out, "leave_one_out.json"))) == table


def test_curriculum_cv_and_ucb_allocation():
    from jaxrl_lm.paprika import curriculum as cur

    assert cur.task_cv([-2.0, -2.0, -2.0]) == 0.0  # all alike: nothing to learn
    assert cur.task_cv([-1.0, -3.0]) == pytest.approx(1.0 / 2.0)
    assert cur.task_cv([0.0, 0.0]) == 0.0
    state = cur.ucb_init(3)
    assert cur.allocate(state, 3).tolist() == [1, 1, 1]  # every group tried first
    for g, v in ((0, 0.0), (1, 0.8), (2, 0.1), (1, 0.6)):
        state = cur.ucb_update(state, g, v)
    assert state.counts.tolist() == [1, 2, 1] and state.means[1] == pytest.approx(0.7)
    split = cur.allocate(state, 12, c=0.1)
    assert split.sum() == 12 and split[1] == split.max() and split[1] > 4
    assert cur.uniform(3, 12).tolist() == [4, 4, 4] and cur.uniform(3, 4).tolist() == [2, 1, 1]
