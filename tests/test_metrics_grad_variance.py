"""The per-sample policy-gradient variance probe (jaxrl_lm.metrics.grad_variance):
the Gram matrix and group variances against float64 numpy on a toy softmax
policy, the oracle baseline against its defining minimisation, and the probe
on a rollout Trajectory against per-sample gradients of the decoder taken one
episode at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.metrics import grad_variance as GV
from jaxrl_lm.models.default import default_policy
from jaxrl_lm.rollout import Trajectory
from jaxrl_lm.sampling import token_logprobs


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
def tiny_model():
    return default_policy(0, hidden_size=16, num_layers=1)[0]


def _traj(prompt, plen, comp, clen, reward):
    """A hand-made one-turn Trajectory (only what pack_turns and the probe read)."""
    b, r = len(plen), jnp.asarray(reward, jnp.float32)[None]
    return Trajectory(prompt[None], jnp.asarray(plen)[None], comp[None], jnp.asarray(clen)[None],
                      jnp.zeros(comp.shape)[None], jnp.ones((1, b), bool),
                      jnp.zeros((1, b), jnp.int32), jnp.ones((1, b), bool), r, r,
                      jnp.ones((1, b), bool), None)


def test_trajectory_gram_matches_per_sample_grads_and_the_advantages(tiny_model):
    model = tiny_model
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
