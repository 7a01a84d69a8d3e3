"""Single-turn answer metrics (jaxrl_lm.evaluation.answers): hand-worked
`answer_stats` on a made-up Trajectory, `make_answer_eval` on the arithmetic
env, and `answer_stats` as RLRunner's `traj_stats` on a prompt dataset (the
reasoning path of the notebooks and experiments/reasoning_claims.py): a demo
warm-up, then a few RL iterations with each group baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.config import from_dict
from jaxrl_lm.data.generate import addition_rows, write_jsonl
from jaxrl_lm.evaluation.answers import answer_stats, make_answer_eval
from jaxrl_lm.models.default import default_policy
from jaxrl_lm.rollout import Trajectory
from jaxrl_lm.train.logging import read_metrics
from jaxrl_lm.train.rl import RLRunner
from jaxrl_lm.train.sft import train_sft
from jaxrl_lm.train.trainer import build_data, warmup_config


@pytest.fixture(scope="module")
def tiny():
    return default_policy(0, hidden_size=16, num_layers=1)


def _traj(prompt, plen, comp, clen, reward):
    """A hand-made one-turn Trajectory (only what answer_stats reads)."""
    b, r = len(plen), jnp.asarray(reward, jnp.float32)[None]
    return Trajectory(prompt[None], jnp.asarray(plen)[None], comp[None], jnp.asarray(clen)[None],
                      jnp.zeros(comp.shape)[None], jnp.ones((1, b), bool),
                      jnp.zeros((1, b), jnp.int32), jnp.ones((1, b), bool), r, r,
                      jnp.ones((1, b), bool), None)


def test_answer_stats_hand_worked(tiny):
    _, tok = tiny
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    comp = jnp.asarray([enc("abcdabcd") + [0, 0], enc("#### 7") + [2, 0, 0, 0], enc("x" * 10)])
    traj = _traj(jnp.zeros((3, 2), jnp.int32), [2, 2, 2], comp, [8, 7, 10], [1.0, 0.0, 0.0])
    got = jax.device_get(answer_stats(traj, first_token=enc("#")[0], ngram=4))
    # "abcdabcd": tokens 4..7 repeat the 4-gram at 0 (4 x -0.05); "x" * 10: 9 tokens
    np.testing.assert_allclose(got["repetition"], (-0.2 - 0.45) / 3, rtol=1e-5)
    assert got["accuracy"] == pytest.approx(1 / 3) and got["length"] == pytest.approx(25 / 3)
    assert got["length_correct"] == 8.0 and got["length_wrong"] == 8.5
    assert got["direct"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="single-turn"):
        answer_stats(jax.tree.map(lambda x: jnp.concatenate([x, x]), traj))


def test_make_answer_eval_on_the_arithmetic_env(tiny):
    _, tok = tiny
    cfg = from_dict({
        "algo": {"name": "grpo", "group_size": 2},
        "rollout": {"max_new_tokens": 8, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False},
        "env": {"name": "arithmetic", "options": {"digits": 1, "ops": "+", "prompt": "short"},
                "max_turns": 1, "max_prompt_len": 13},
        "train": {"batch_size": 4, "max_len": 21}})
    run = make_answer_eval(cfg, tok, episodes=6, first_token=tok.encode("A")[0])
    ev = run(tiny[0], jax.random.key(1))
    again = run(tiny[0], jax.random.key(1))
    assert ev["correct"].shape == (6,) and ((1 <= ev["length"]) & (ev["length"] <= 8)).all()
    for k in ev:  # a fixed key gives the same problems and samples: evaluations are paired
        np.testing.assert_array_equal(ev[k], again[k])


def _data_config(path, name, steps=2):
    return from_dict({
        "algo": {"name": name, "group_size": 2, "loss_agg": "token-mean", "epochs": 1},
        "rollout": {"max_new_tokens": 24, "temperature": 1.0, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False, "cosine_length": True,
                    "repetition_ngram": 4},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                  "max_grad_norm": 0.0},
        "warmup": {"steps": 3, "lr": 1e-2, "batch_size": 8},
        "env": {"max_prompt_len": 32},
        "train": {"steps": steps, "batch_size": 8, "max_len": 56, "seed": 0,
                  "progress": False},
        "data": {"path": str(path), "eval_fraction": 0.2, "demo_column": "demo"}})


def test_demo_warmup_then_rl_with_each_baseline_logs_answer_stats(tiny, tmp_path):
    model, tok = tiny
    # b <= 2 keeps the longest demo ("9+2=10+1=11+0 #### 11" + EOS) within 24 tokens
    path = write_jsonl(addition_rows(30, seed=0, digits=1, b_max=2), str(tmp_path / "add.jsonl"))
    wcfg = warmup_config(_data_config(path, "grpo"))
    sft = train_sft(wcfg, str(tmp_path / "sft"), model=model, data_fn=build_data(wcfg, tok))
    losses = [row["loss"] for row in read_metrics(str(tmp_path / "sft"))]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    nnx.update(model, jax.device_get(sft.state.params))
    direct = tok.encode("#", add_special_tokens=False)[0]  # a bare "#### n" answer
    for name in ("grpo", "dr_grpo", "opo"):
        runner = RLRunner(_data_config(path, name), model, tok,
                          traj_stats=lambda t: answer_stats(t, first_token=direct))
        result = runner.train(str(tmp_path / name))
        rows = read_metrics(str(tmp_path / name))
        assert [r["step"] for r in rows] == [1, 2]
        for key in ("loss", "accuracy", "length", "length_correct", "direct", "repetition",
                    "reward", "reward/answer"):
            assert all(np.isfinite(r[key]) for r in rows), (name, key)
        # the verifier's 0/1 answer reward is what answer_stats counts as correct
        assert all(r["accuracy"] == pytest.approx(r["reward/answer"]) for r in rows)
        assert all(1 <= r["length"] <= 24 for r in rows)
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                             result.state.params, sft.state.params))
        assert any(moved), name  # cosine rewards differ within groups: the policy moves
