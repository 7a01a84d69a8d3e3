"""env.mix: the config checks, the batch split by weight, and two RL
iterations on a mixture of two small envs with per-group metrics."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from jaxrl_lm.config import ConfigError, from_dict
from jaxrl_lm.train.mix import EnvMix, split_groups
from jaxrl_lm.train.rl import RLRunner
from jaxrl_lm.train.trainer import build_policy

MIX = [{"name": "bandit", "weight": 2.0, "options": {"k": 2, "horizon": 3, "context": 2}},
       {"name": "best_arm", "weight": 1.0, "options": {"k": 2, "budget": 2}}]


def tiny(**env) -> dict:
    return {"algo": {"name": "grpo", "group_size": 2},
            "rollout": {"max_new_tokens": 6},
            "train": {"steps": 2, "batch_size": 8, "micro_batches": 1, "max_len": 208,
                      "progress": False, "ckpt_every": 2},
            "optim": {"warmup_steps": 0},
            "env": {"name": "bandit", "max_prompt_len": 200, "max_turns": 3, **env}}


@pytest.mark.parametrize("weights,groups,want", [
    ([1, 1], 4, [2, 2]), ([3, 1], 4, [3, 1]), ([10, 1, 1], 4, [2, 1, 1]),
    ([1, 2], 8, [3, 5]), ([0.2, 0.3, 0.5], 10, [2, 3, 5]), ([1e6, 1], 2, [1, 1])])
def test_split_groups_follows_weights(weights, groups, want):
    assert split_groups(weights, groups) == want


def test_split_groups_needs_a_group_each():
    with pytest.raises(ValueError, match="3 entries need at least 3 groups"):
        split_groups([1, 1, 1], 2)


@pytest.mark.parametrize("env,message", [
    ({"mix": [{"name": "nope"}]}, "env.mix.0.name='nope': unknown env"),
    ({"mix": [{"name": "best_arm", "weight": 0}]}, "env.mix.0.weight=0: must be > 0"),
    ({"mix": [{"name": "best_arm", "weight": float("nan")}]}, "must be > 0 and finite"),
    ({"mix": [{"name": "best_arm", "options": {"k": 1}}]}, "env.mix.0.options: BestArm.k=1"),
    ({"mix": [{"name": "best_arm"}, {"name": "best_arm"}]}, "label 'best_arm' used twice"),
    ({"mix": [{"name": "best_arm", "label": "a"}, {"name": "bandit", "label": "a"}]},
     "env.mix.1: label 'a' used twice"),
    ({"mix": [{"name": "best_arm", "label": "a/b"}]}, "env.mix.0.label='a/b': must be letters"),
    ({"mix": [{"name": "best_arm", "label": ""}]}, "env.mix.0.label='': must be letters"),
    ({"mix": [{"name": "best_arm", "label": 3}]}, "env.mix.0.label=3: must be letters"),
    ({"mix": [{"name": "best_arm", "label": "time"}]}, "not eval or time"),
    ({"mix": [{"name": "best_arm", "opts": {}}]}, "unknown key"),
])
def test_bad_mix_is_a_config_error(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_dict({"env": {"name": "bandit", **env}})


def test_mix_needs_a_group_per_entry():
    with pytest.raises(ConfigError, match=r"env\.mix has 2 entries, each needing a group of "
                                          r"algo\.group_size=8 .*train\.batch_size=8 gives 1"):
        from_dict({**tiny(mix=MIX), "algo": {"name": "grpo", "group_size": 8}})


def test_one_env_twice_under_two_labels():
    """Tic-tac-toe against two opponents: each entry plays its own options
    under its label, and env.options still make the warm-up's and the
    evaluation's env (the board prompt here), not the groups'."""
    from jaxrl_lm.envs import tictactoe
    from jaxrl_lm.train.tasks import make_task

    mix = [{"name": "tictactoe", "label": "noisy",
            "options": {"opponent": "noisy", "noise": 0.5, "prompt": "board"}},
           {"name": "tictactoe", "label": "random", "weight": 1.0,
            "options": {"opponent": "random", "prompt": "board"}}]
    cfg = from_dict({**tiny(mix=mix, name="tictactoe", options={"prompt": "board"}),
                     "rollout": {"max_new_tokens": 4}})
    assert cfg.env.options == {"prompt": "board"}
    tokenizer = build_policy(cfg)[1]
    groups = EnvMix.from_config(cfg, tokenizer).groups
    assert [(g.name, g.start, g.batch) for g in groups] == [("noisy", 0, 4), ("random", 4, 4)]
    assert [(g.env.opponent, g.env.noise, g.env.prompt) for g in groups] == [
        ("noisy", 0.5, "board"), ("random", tictactoe.TicTacToe.noise, "board")]
    env, _ = make_task(cfg, tokenizer)
    assert (env.opponent, env.prompt) == (tictactoe.TicTacToe.opponent, "board")


@pytest.mark.slow
def test_mix_trains_with_per_group_metrics(tmp_path):
    cfg = from_dict(tiny(mix=MIX))
    model, tokenizer = build_policy(cfg)
    runner = RLRunner(cfg, model, tokenizer)
    # 8 episodes = 4 groups of 2, split 2:1 -> 3 and 1 groups
    assert [(g.name, g.start, g.batch) for g in runner.mix.groups] == [
        ("bandit", 0, 6), ("best_arm", 6, 2)]
    runner.train(str(tmp_path))
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["bandit/episodes"] == 6 and r["best_arm/episodes"] == 2
        for name in ("bandit", "best_arm"):
            assert 0.0 <= r[f"{name}/win_rate"] <= 1.0
            assert r[f"{name}/prompt_cut"] == 0
        # best_arm ends after budget + 1 turns at most; bandit after its horizon
        assert r["best_arm/turns"] <= 3 and r["bandit/turns"] == 3
        # the joined batch's statistic is the episode-weighted mean of the groups'
        want = (6 * r["bandit/turns"] + 2 * r["best_arm/turns"]) / 8
        assert r["turns"] == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_mix_prompt_too_long_names_the_group(tmp_path):
    cfg = from_dict(tiny(mix=MIX, max_prompt_len=160))
    model, tokenizer = build_policy(cfg)
    runner = RLRunner(cfg, model, tokenizer)
    state, ref = runner.init()
    with pytest.raises(ValueError, match="env.mix group 'best_arm'"):
        runner.iteration(state, ref, 0)


def test_mix_refuses_a_dataset():
    cfg = from_dict(tiny(mix=MIX))
    with pytest.raises(ValueError, match="data.path"):
        EnvMix.from_config(dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, path="x.jsonl")), None)
