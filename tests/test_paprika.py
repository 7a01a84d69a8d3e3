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
    msgs = [{"role": "user", "content": f"task {task}"}]
    for i, a in enumerate(answers):
        if i:
            msgs.append({"role": "user", "content": f"obs {i}"})
        msgs.append({"role": "assistant", "content": a})
    return {"group": group, "task": task, "episode": ep, "messages": msgs,
            "score": score_}


def test_make_pairs_skips_tied_tasks_and_loads_with_assistant_masks(tmp_path):
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
    assert loaded[0]["prompt"] == [{"role": "user", "content": "task 0"}]
    assert [m["role"] for m in loaded[0]["chosen"]] == ["assistant", "user", "assistant"]
    pairs = build_pairs(loaded, tok, max_len=256)
    for side, answers in ((0, ["ACTION=1", "ACTION=2"]), (1, ["ACTION=0", "ACTION=3", "ACTION=4"])):
        scored = tok.decode(pairs.tokens[0, side][pairs.mask[0, side] > 0].tolist())
        # PLAIN_TEMPLATE: each assistant turn is " <content>\n" after "Assistant:"
        assert scored == "".join(f" {a}\n" for a in answers)
        whole = tok.decode(pairs.tokens[0, side, : pairs.lengths[0, side]].tolist())
        assert "obs 1" in whole and "obs 1" not in scored


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
    # the episodes of a task share it: the same first observation (arms not shown
    # until pulled, so it is the same text for every task of this env)
    firsts = {r["messages"][0]["content"] for r in recs}
    assert len(firsts) == 1 and firsts.pop().startswith("Best arm: 2 arms")


def test_generate_section_checks_the_groups():
    with pytest.raises(ConfigError, match="generate.groups.0.name='nope'"):
        GenerateSection(groups=({"name": "nope"},))
    with pytest.raises(ConfigError, match="generate.trajectories=0"):
        GenerateSection(groups=({"name": "best_arm"},), trajectories=0)


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(tmp_path, capsys):
    cfg = yaml.safe_load(open(PRESET))
    assert len(cfg["generate"]["groups"]) >= 4
    for stage in ("sft", "rpo"):
        cfg[stage]["train"]["steps"] = 2
    path = tmp_path / "paprika.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pc, out = load(str(path)), str(tmp_path / "run")
    info = run(pc, out)
    assert info["generate"]["episodes"] == 4 * 2 * 4  # groups x tasks x trajectories
    assert 1 <= info["pairs"]["pairs"] <= 8
    assert os.path.exists(os.path.join(out, "sft", "hf", "model.safetensors"))
    assert os.path.exists(os.path.join(out, "rpo", "hf", "model.safetensors"))
    assert np.isfinite(info["rpo"]["train"]["loss"])
    # a finished run refuses to start over; with --resume every stage is skipped
    with pytest.raises(ConfigError, match="add --resume"):
        run(pc, out)
    stamps = {s: os.path.getmtime(os.path.join(out, s, "stage.json")) for s in info}
    os.remove(os.path.join(out, "rpo", "stage.json"))  # rpo: unfinished, checkpoints kept
    capsys.readouterr()
    again = run(pc, out, resume=True)
    said = capsys.readouterr().out
    for s in ("generate", "pairs", "sft"):
        assert f"{s}: finished, skipped" in said
        assert os.path.getmtime(os.path.join(out, s, "stage.json")) == stamps[s]
    assert again["rpo"]["resumed_from"] == 2  # its last checkpoint: nothing left to train
    assert again["rpo"]["train"]["loss"] == pytest.approx(info["rpo"]["train"]["loss"])


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
