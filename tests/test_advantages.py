"""Advantage estimators against float64 numpy loops written from the formulas,
plus hand-worked cases, jit/vmap agreement, and the GRPO std conventions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxrl_lm import advantages as A


def ref_gae(r, v, d, gamma, lam, last):
    T = r.shape[-1]
    adv = np.zeros_like(r, dtype=np.float64)
    for idx in np.ndindex(r.shape[:-1]):
        acc = 0.0
        for t in reversed(range(T)):
            nv = v[idx + (t + 1,)] if t + 1 < T else last[idx]
            cont = 0.0 if d[idx + (t,)] else 1.0
            delta = r[idx + (t,)] + gamma * cont * nv - v[idx + (t,)]
            acc = delta + gamma * lam * cont * acc
            adv[idx + (t,)] = acc
    return adv


def ref_group(r, G, fn):
    return np.concatenate([fn(np.asarray(g, np.float64)) for g in np.asarray(r).reshape(-1, G)])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([1.0, 0.9]), lam=st.sampled_from([1.0, 0.95, 0.0]))
def test_gae_matches_reference(seed, gamma, lam):
    rng = np.random.default_rng(seed)
    r, v = rng.normal(size=(2, 3, 7))
    d = rng.random((3, 7)) < 0.25
    last = rng.normal(size=3)
    adv, ret = jax.jit(functools.partial(A.gae, gamma=gamma, lam=lam))(
        jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32), jnp.asarray(d), last_value=jnp.asarray(last, jnp.float32))
    want = ref_gae(r, v, d, gamma, lam, last)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want + v, rtol=1e-5, atol=1e-5)


def test_gae_hand_worked():
    # T=3, gamma=lam=1, episode ends at t=1, new one starts at t=2 (bootstrap V_T=0).
    r = jnp.array([1.0, 2.0, 3.0]); v = jnp.array([0.5, 0.25, 1.0]); d = jnp.array([False, True, False])
    adv, ret = A.gae(r, v, d, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(ret, [3.0, 2.0, 3.0])  # Monte-Carlo returns inside each episode
    np.testing.assert_allclose(adv, [2.5, 1.75, 2.0])


def test_returns_to_go_matches_reference_and_gae():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(4, 9)); d = rng.random((4, 9)) < 0.3
    got = A.returns_to_go(jnp.asarray(r, jnp.float32), jnp.asarray(d), gamma=0.9)
    want = np.zeros_like(r)
    for b in range(4):
        acc = 0.0
        for t in reversed(range(9)):
            acc = r[b, t] + 0.9 * (0.0 if d[b, t] else acc)
            want[b, t] = acc
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    via_gae, _ = A.gae(jnp.asarray(r, jnp.float32), jnp.zeros((4, 9)), jnp.asarray(d), gamma=0.9, lam=1.0)
    np.testing.assert_allclose(got, via_gae, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("scale", A.GRPO_SCALES)
def test_grpo_matches_reference(scale, ddof):
    rng = np.random.default_rng(2)
    r = rng.normal(size=12).round(1)
    r[4:8] = 0.7  # a group with equal rewards gets exactly 0
    G, eps = 4, 1e-6
    got = A.grpo_advantages(jnp.asarray(r, jnp.float32), G, scale=scale, ddof=ddof, eps=eps)
    if scale == "group":
        want = ref_group(r, G, lambda g: (g - g.mean()) / (np.sqrt(((g - g.mean()) ** 2).sum() / (G - ddof)) + eps))
    else:
        centred = ref_group(r, G, lambda g: g - g.mean())
        sd = np.sqrt(((r - r.mean()) ** 2).sum() / (r.size - ddof))
        want = centred / (sd + eps) if scale == "batch" else centred
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[4:8] == 0)


def test_grpo_ddof_hand_worked():
    # Rewards [1, 0]: deviations +-0.5; population std 0.5, unbiased std sqrt(0.5).
    r = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(A.grpo_advantages(r, 2, ddof=0, eps=0.0), [1.0, -1.0], rtol=1e-6)
    np.testing.assert_allclose(A.grpo_advantages(r, 2, ddof=1, eps=0.0), [0.5 / np.sqrt(0.5), -0.5 / np.sqrt(0.5)],
                               rtol=1e-6)


def test_group_estimators_match_reference_and_hand_cases():
    rng = np.random.default_rng(3)
    r = rng.normal(size=12); lens = rng.integers(1, 50, 12)
    np.testing.assert_allclose(A.dr_grpo_advantages(jnp.asarray(r, jnp.float32), 3),
                               ref_group(r, 3, lambda g: g - g.mean()), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(A.rloo_advantages(jnp.asarray(r, jnp.float32), 4),
                               ref_group(r, 4, lambda g: np.array([g[i] - np.delete(g, i).mean() for i in range(4)])),
                               rtol=1e-5, atol=1e-6)
    want = np.concatenate([rg - (lg * rg).sum() / lg.sum() for rg, lg in zip(r.reshape(3, 4), lens.reshape(3, 4))])
    np.testing.assert_allclose(A.opo_advantages(jnp.asarray(r, jnp.float32), jnp.asarray(lens), 4), want,
                               rtol=1e-5, atol=1e-6)
    # OPO by hand: r = [1, 0], l = [1, 3] -> b = 1/4 -> A = [0.75, -0.25].
    np.testing.assert_allclose(A.opo_advantages(jnp.array([1.0, 0.0]), jnp.array([1, 3]), 2), [0.75, -0.25])
    # Group of one: baseline is the reward itself, advantage 0. All-zero lengths: plain mean.
    np.testing.assert_allclose(A.opo_advantages(jnp.array([3.0, -2.0]), jnp.array([5, 7]), 1), [0.0, 0.0])
    np.testing.assert_allclose(A.opo_advantages(jnp.array([1.0, 0.0]), jnp.array([0, 0]), 2), [0.5, -0.5])
    # RLOO by hand: [1, 2, 6] -> [1 - 4, 2 - 3.5, 6 - 1.5].
    np.testing.assert_allclose(A.rloo_advantages(jnp.array([1.0, 2.0, 6.0]), 3), [-3.0, -1.5, 4.5])


def test_whiten_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.normal(3, 2, size=(3, 8)); m = rng.random((3, 8)) < 0.6
    for ddof, shift in ((0, True), (1, False)):
        got = A.whiten(jnp.asarray(x, jnp.float32), jnp.asarray(m), ddof=ddof, shift_mean=shift)
        v = x[m]
        want = (x - v.mean()) / np.sqrt(v.var(ddof=ddof) + 1e-8) + (0 if shift else v.mean())
        np.testing.assert_allclose(got, np.where(m, want, 0), rtol=1e-5, atol=1e-5)


def test_jit_vmap_agree():
    rng = np.random.default_rng(5)
    r = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    f = functools.partial(A.grpo_advantages, group_size=4, ddof=0)
    np.testing.assert_allclose(jax.vmap(f)(r), np.stack([f(x) for x in r]), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(f)(r[0]), f(r[0]), rtol=1e-6)
    g = jax.vmap(lambda x: A.opo_advantages(x, jnp.arange(1, 9), 4))
    np.testing.assert_allclose(g(r), np.stack([A.opo_advantages(x, jnp.arange(1, 9), 4) for x in r]), rtol=1e-6)


def test_bad_arguments_raise():
    r = jnp.zeros(6)
    with pytest.raises(ValueError, match="group_size=4 must divide the batch size 6"):
        A.grpo_advantages(r, 4)
    with pytest.raises(ValueError, match="scale='std'"):
        A.grpo_advantages(r, 3, scale="std")
    with pytest.raises(ValueError, match="ddof=1 needs more than 1"):
        A.grpo_advantages(r, 1, ddof=1)
    with pytest.raises(ValueError, match="RLOO needs at least 2"):
        A.rloo_advantages(r, 1)
    with pytest.raises(ValueError, match="gamma"):
        A.gae(r, r, r, gamma=1.5)
    with pytest.raises(ValueError, match="rank 1"):
        A.dr_grpo_advantages(jnp.zeros((2, 3)), 3)
