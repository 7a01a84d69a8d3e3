"""The arithmetic experiments of the notebooks on the library path: the
gradient-variance probe (jaxrl_lm.metrics.grad_variance) against float64 numpy
and hand-worked references, the scratchpad warm-up data
(jaxrl_lm.train.arith_data), the answer metrics (jaxrl_lm.evaluation.answers),
and a tiny end to end: train_sft, then RLRunner with grpo, dr_grpo and opo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.config import from_dict
from jaxrl_lm.envs.text import TextInterface, parse_text
from jaxrl_lm.evaluation.answers import answer_stats, make_answer_eval
from jaxrl_lm.metrics import grad_variance as GV
from jaxrl_lm.models.default import default_policy
from jaxrl_lm.rollout import Trajectory
from jaxrl_lm.sampling import token_logprobs
from jaxrl_lm.train.arith_data import arith_sft_data, completion
from jaxrl_lm.train.logging import read_metrics
from jaxrl_lm.train.rl import RLRunner
from jaxrl_lm.train.sft import train_sft

ENV = {"digits": 1, "ops": "+", "prompt": "short"}
PROMPT_LEN = len("Compute 3+4.\n")


# -- gradient variance on a toy linear softmax policy ----------------------------

def _toy(seed=0, n_groups=3, g=4, d=5, c=3):
    rng = np.random.default_rng(seed)
    w, bias = rng.normal(size=(c, d)), rng.normal(size=c)
    x, y = rng.normal(size=(n_groups * g, d)), rng.integers(0, c, n_groups * g)
    return w, bias, x, y


def _toy_logp(params, sample):
    x, y = sample
    return jax.nn.log_softmax(params["w"] @ x + params["b"])[y]


def _numpy_scores(w, bias, x, y):
    """s_i = d/d(w, b) log softmax(w x_i + b)[y_i] = ((e_y - p) x^T, e_y - p), float64."""
    z = x @ w.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = np.eye(w.shape[0])[y] - p
    return np.concatenate([(e[:, :, None] * x[:, None, :]).reshape(len(x), -1), e], 1)


def test_gram_and_variance_match_float64_numpy():
    w, bias, x, y = _toy()
    g = 4
    params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(bias, jnp.float32)}
    gram = GV.score_gram(_toy_logp, params, (jnp.asarray(x, jnp.float32), jnp.asarray(y)), g)
    s = _numpy_scores(w, bias, x, y).reshape(3, g, -1)
    np.testing.assert_allclose(gram, np.einsum("gip,gjp->gij", s, s), rtol=1e-5, atol=1e-6)

    adv = np.random.default_rng(1).normal(size=12)
    v, m = GV.group_variance(gram, jnp.asarray(adv, jnp.float32))
    contrib = adv.reshape(3, g, 1) * s  # g_i = A_i s_i
    mean = contrib.mean(1, keepdims=True)
    np.testing.assert_allclose(v, ((contrib - mean) ** 2).sum((1, 2)) / (g - 1), rtol=1e-4)
    np.testing.assert_allclose(m, (mean[:, 0] ** 2).sum(-1), rtol=1e-4)


def test_oracle_baseline_is_the_weighted_mean_and_minimises_the_second_moment():
    w, bias, x, y = _toy(seed=2)
    s = _numpy_scores(w, bias, x, y).reshape(3, 4, -1)
    gram = jnp.asarray(np.einsum("gip,gjp->gij", s, s), jnp.float32)
    r = np.array([1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1], np.float64)
    adv = np.asarray(GV.oracle_advantages(jnp.asarray(r, jnp.float32), gram)).reshape(3, 4)
    n2 = (s**2).sum(-1)
    base = (n2 * r.reshape(3, 4)).sum(1) / n2.sum(1)
    np.testing.assert_allclose(adv, r.reshape(3, 4) - base[:, None], rtol=1e-5, atol=1e-6)

    def second_moment(b):
        return (((r.reshape(3, 4) - b[:, None]) ** 2) * n2).sum(1)

    for shift in (-0.05, 0.05):
        assert np.all(second_moment(base + shift) > second_moment(base))


def test_group_variance_rejects_groups_of_one():
    with pytest.raises(ValueError, match="at least 2"):
        GV.group_variance(jnp.ones((3, 1, 1)), jnp.ones(3))
    with pytest.raises(ValueError, match="group_size"):
        GV.score_gram(_toy_logp, {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
                      (jnp.ones((5, 2)), jnp.zeros(5, jnp.int32)), 2)


# -- the probe on a rollout's Trajectory ----------------------------------------

@pytest.fixture(scope="module")
def tiny():
    model, tok = default_policy(0, hidden_size=16, num_layers=1)
    env = envs.make("arithmetic", **ENV)
    return model, tok, TextInterface(env, tok, max_prompt_len=PROMPT_LEN, pad_id=tok.pad_token_id)


def _traj(prompt, plen, comp, clen, reward):
    """A hand-made one-turn Trajectory (only what pack_turns and the probe read)."""
    b, r = len(plen), jnp.asarray(reward, jnp.float32)[None]
    return Trajectory(prompt[None], jnp.asarray(plen)[None], comp[None], jnp.asarray(clen)[None],
                      jnp.zeros(comp.shape)[None], jnp.ones((1, b), bool),
                      jnp.zeros((1, b), jnp.int32), jnp.ones((1, b), bool), r, r,
                      jnp.ones((1, b), bool), None)


def test_trajectory_gram_matches_per_sample_grads_and_the_advantages(tiny):
    model, _, _ = tiny
    key = jax.random.key(0)
    prompt = jax.random.randint(key, (4, 5), 4, 100)
    comp = jax.random.randint(jax.random.fold_in(key, 1), (4, 6), 4, 100)
    plen, clen, reward = [5, 3, 4, 5], [2, 6, 1, 4], [1.0, 0.0, 0.0, 1.0]
    traj = _traj(prompt, plen, comp, clen, reward)
    gram = GV.trajectory_gram(model, traj, 2)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def logp_one(p, i):  # episode i alone: its prompt then completion, no vmap, no packing
        row = jnp.concatenate([prompt[i, : plen[i]], comp[i, : clen[i]]])[None]
        mask = (jnp.arange(row.shape[1]) >= plen[i])[None]
        return token_logprobs(nnx.merge(graphdef, p, rest), row, mask).sum()

    flat = [np.concatenate([np.ravel(leaf).astype(np.float64) for leaf in jax.tree.leaves(
        jax.grad(logp_one)(params, i))]) for i in range(4)]
    want = np.array([[[flat[2 * k + i] @ flat[2 * k + j] for j in range(2)] for i in range(2)]
                     for k in range(2)])
    np.testing.assert_allclose(gram, want, rtol=1e-4)

    out = GV.baseline_variances(gram, traj)
    np.testing.assert_array_equal(out["length"], clen)
    np.testing.assert_allclose(out["sq_norm"], [f @ f for f in flat], rtol=1e-4)
    # both groups have rewards (1, 0): Dr. GRPO's advantages are +-0.5, GRPO's those
    # over the unbiased group std (sqrt(0.5) + eps), OPO's r - (l1 r1 + l2 r2) / (l1 + l2)
    g2 = np.asarray(gram, np.float64)
    for name, adv in (("dr_grpo", [0.5, -0.5, -0.5, 0.5]),
                      ("opo", [1 - 2 / 8, -2 / 8, -4 / 5, 1 - 4 / 5])):
        a = np.reshape(adv, (2, 2))
        inner = a[:, :, None] * a[:, None, :] * g2
        total = inner.sum((1, 2))
        np.testing.assert_allclose(out[f"V_{name}"], np.trace(inner, axis1=1, axis2=2) - total / 2,
                                   rtol=1e-4)
        np.testing.assert_allclose(out[f"M_{name}"], total / 4, rtol=1e-4)
    np.testing.assert_allclose(out["V_grpo"], out["V_dr_grpo"] / (0.5**0.5 + 1e-6) ** 2,
                               rtol=1e-4)


# -- warm-up data and answer metrics ---------------------------------------------

def test_completions_hand_worked_and_parse(tiny):
    _, _, text = tiny
    assert completion(3, 4, "direct") == "ACTION=7"
    assert completion(3, 4, "scratchpad") == "3+4=4+3=5+2=6+1=7+0 ACTION=7"
    assert completion(5, 0, "scratchpad") == "5+0 ACTION=5"
    for a, b in ((0, 0), (9, 9), (3, 4)):
        for style in ("direct", "scratchpad"):
            assert parse_text(text.env, completion(a, b, style)) == (a + b, True)
    with pytest.raises(ValueError, match="style"):
        completion(1, 2, "essay")


def test_sft_rows_are_the_short_prompt_then_a_completion(tiny):
    _, tok, text = tiny
    data = arith_sft_data(text, tok, batch_size=8, max_len=80)
    batch = data(0, jax.random.key(3))
    again = data(0, jax.random.key(3))
    np.testing.assert_array_equal(batch["tokens"], again["tokens"])  # pure in the key
    for row, m in zip(batch["tokens"], batch["loss_mask"]):
        text_row = tok.decode(list(row), skip_special_tokens=False)
        prompt, rest = text_row.split("\n", 1)
        a, b = (int(v) for v in prompt.removeprefix("Compute ").rstrip(".").split("+"))
        answer = rest.split("<pad>")[0]
        assert answer in [completion(a, b, s) + "<eos>" for s in ("direct", "scratchpad")]
        assert m[:PROMPT_LEN].sum() == 0 and tok.decode(list(row[m > 0])) == answer
    with pytest.raises(ValueError, match="max_len"):
        arith_sft_data(text, tok, batch_size=64, max_len=30, p_direct=0.0)(0, jax.random.key(0))


def test_answer_stats_hand_worked(tiny):
    _, tok, _ = tiny
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    comp = jnp.asarray([enc("abcdabcd") + [0, 0], enc("ACTION=7") + [2, 0], enc("x" * 10)])
    traj = _traj(jnp.zeros((3, 2), jnp.int32), [2, 2, 2], comp, [8, 9, 10], [1.0, 0.0, 0.0])
    got = jax.device_get(answer_stats(traj, first_token=enc("A")[0], ngram=4))
    # "abcdabcd": tokens 4..7 repeat the 4-gram at 0 (4 x -0.05); "x" * 10: 9 tokens
    np.testing.assert_allclose(got["repetition"], (-0.2 - 0.45) / 3, rtol=1e-5)
    assert got["accuracy"] == pytest.approx(1 / 3) and got["length"] == pytest.approx(9.0)
    assert got["length_correct"] == 8.0 and got["length_wrong"] == 9.5
    assert got["direct"] == pytest.approx(1 / 3)


# -- SFT, then RL with each baseline through RLRunner -------------------------------

def _rl_config(name, steps=2):
    return from_dict({
        "algo": {"name": name, "group_size": 2, "loss_agg": "token-mean", "epochs": 1,
                 "beta": 0.0},
        "rollout": {"max_new_tokens": 8, "temperature": 1.0, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False, "cosine_length": True,
                    "repetition_ngram": 4},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                  "max_grad_norm": 0.0, "warmup_steps": 0},
        "env": {"name": "arithmetic", "options": ENV, "max_turns": 1,
                "max_prompt_len": PROMPT_LEN},
        "train": {"steps": steps, "batch_size": 8, "micro_batches": 1,
                  "max_len": PROMPT_LEN + 8, "seed": 0, "progress": False}})


def test_sft_then_rl_with_each_baseline(tiny, tmp_path):
    model, tok, text = tiny
    sft_cfg = from_dict({
        "algo": {"name": "sft"}, "optim": {"lr": 1e-2, "weight_decay": 0.0, "max_grad_norm": 0.0},
        "train": {"steps": 3, "batch_size": 8, "max_len": 80, "progress": False}})
    sft = train_sft(sft_cfg, str(tmp_path / "sft"), model=model,
                    data_fn=arith_sft_data(text, tok, batch_size=8, max_len=80))
    losses = [row["loss"] for row in read_metrics(str(tmp_path / "sft"))]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    nnx.update(model, jax.device_get(sft.state.params))
    direct = tok.encode("A", add_special_tokens=False)[0]
    for name in ("grpo", "dr_grpo", "opo"):
        cfg = _rl_config(name)
        runner = RLRunner(cfg, model, tok,
                          traj_stats=lambda t: answer_stats(t, first_token=direct))
        result = runner.train(str(tmp_path / name))
        rows = read_metrics(str(tmp_path / name))
        assert [r["step"] for r in rows] == [1, 2]
        for key in ("loss", "accuracy", "length", "length_correct", "direct", "repetition",
                    "reward"):
            assert all(np.isfinite(r[key]) for r in rows), (name, key)
        assert all(1 <= r["length"] <= 8 for r in rows)
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                             result.state.params, sft.state.params))
        assert any(moved), name  # cosine rewards differ within groups: the policy moves
    ev = make_answer_eval(_rl_config("grpo"), tok, episodes=6, first_token=direct)(
        model, jax.random.key(1))
    assert ev["correct"].shape == (6,) and (ev["length"] >= 1).all()
