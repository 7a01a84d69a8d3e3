"""envs.bits: the hashed draws the envs take instead of threefry, against
exact distributions worked in float64 numpy (chi-square, moments, a KS
distance) and checks that salts, seeds and derived keys decorrelate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.envs import bandit
from jaxrl_lm.envs.bits import derive_key, key_bits, normal_from_bits, uniform_from_bits

N = 200_000
# chi-square critical values at p = 1e-4 (fixed seeds: a pass is not luck-dependent)
CHI2_1E4 = {19: 50.8, 255: 349.7}


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def test_uniform_bits_are_uniform_over_split_and_plain_seed_keys():
    for keys in (_keys(N), jax.vmap(jax.random.key)(jnp.arange(N))):  # split, and key(0..N-1)
        u = np.asarray(jax.jit(jax.vmap(lambda k: uniform_from_bits(key_bits(k, 0))))(keys),
                       np.float64)
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
        assert _chi2(np.histogram(u, bins=20, range=(0, 1))[0]) < CHI2_1E4[19]
        # byte-level uniformity of the raw bits' low byte (the multiply mix's weakest)
        bits = np.asarray(jax.jit(jax.vmap(lambda k: key_bits(k, 0)))(keys))
        assert _chi2(np.bincount(bits & 0xFF, minlength=256)) < CHI2_1E4[255]


def test_salts_and_neighbouring_seeds_are_uncorrelated():
    keys = _keys(N, 1)
    u = np.asarray(jax.jit(jax.vmap(lambda k: uniform_from_bits(key_bits(k, jnp.arange(3, dtype=jnp.uint32)))))(keys), np.float64)
    bound = 5 / math.sqrt(N)  # |corr| of independent draws: sd 1/sqrt(N)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert abs(np.corrcoef(u[:, i], u[:, j])[0, 1]) < bound
    seeds = np.asarray(jax.jit(jax.vmap(lambda s: uniform_from_bits(key_bits(jax.random.key(s), 0))))(
        jnp.arange(N + 1)), np.float64)
    assert abs(np.corrcoef(seeds[:-1], seeds[1:])[0, 1]) < bound


def test_normal_from_bits_matches_the_standard_normal():
    z = np.asarray(jax.jit(jax.vmap(lambda k: normal_from_bits(key_bits(k, 0))))(_keys(N, 2)),
                   np.float64)
    assert np.isfinite(z).all() and np.abs(z).max() < 5.5
    assert abs(z.mean()) < 4 / math.sqrt(N)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / N)
    assert abs(((z - z.mean()) ** 3).mean()) < 4 * math.sqrt(15 / N)  # skew of N(0,1): 0
    zs = np.sort(z)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(zs / math.sqrt(2)))
    ks = np.max(np.maximum(np.arange(1, N + 1) / N - cdf, cdf - np.arange(N) / N))
    assert ks < 1.95 / math.sqrt(N)  # KS critical value at p = 0.001
    # the extremes of the 24-bit grid are finite and symmetric
    ends = normal_from_bits(jnp.asarray([0, 0xFFFFFFFF], jnp.uint32))
    assert np.isfinite(ends).all() and float(ends[0]) == -float(ends[1])


def test_bandit_draws_have_the_stated_distributions():
    keys = _keys(N, 3)
    for mu in (0.05, 0.3, 0.9):
        r = np.asarray(jax.jit(jax.vmap(lambda k: bandit.draw_reward("bernoulli", 1.0, jnp.float32(mu), k)))(keys))
        assert set(np.unique(r)) <= {0.0, 1.0}
        assert abs(r.mean() - mu) < 4 * math.sqrt(mu * (1 - mu) / N)
    r = np.asarray(jax.jit(jax.vmap(lambda k: bandit.draw_reward("gaussian", 3.0, jnp.float32(0.4), k)))(keys), np.float64)
    assert abs(r.mean() - 0.4) < 4 * 3 / math.sqrt(N) and abs(r.std() - 3) < 0.05
    mu = np.asarray(jax.jit(jax.vmap(lambda k: bandit.arm_means(k, 5)))(keys), np.float64)
    assert _chi2(np.histogram(mu[:, 4], bins=20, range=(0, 1))[0]) < CHI2_1E4[19]
    assert abs(np.corrcoef(mu[:, 0], mu[:, 1])[0, 1]) < 5 / math.sqrt(N)
    # the best arm is uniform over the k arms (a symmetric draw)
    best = np.bincount(mu.argmax(1), minlength=5)
    assert np.abs(best / N - 0.2).max() < 4 * math.sqrt(0.16 / N)


def test_derive_key_gives_distinct_valid_keys_of_the_same_impl():
    key = jax.random.key(7)
    a, b = derive_key(key, 0), derive_key(key, 1)
    assert a.dtype == key.dtype and a.shape == key.shape
    datas = [tuple(np.asarray(jax.random.key_data(k))) for k in (key, a, b)]
    assert len(set(datas)) == 3
    # deterministic, and one changed salt or key bit changes every word
    assert (jax.random.key_data(derive_key(key, 0)) == jax.random.key_data(a)).all()
    other = derive_key(jax.random.key(6), 0)
    assert (jax.random.key_data(other) != jax.random.key_data(a)).all()
    # derived keys feed jax.random like any other: uniform, and uncorrelated with
    # the draws of their sibling and of their parent
    keys = _keys(N, 4)
    u = np.asarray(jax.jit(jax.vmap(lambda k: jnp.stack([
        jax.random.uniform(k), jax.random.uniform(derive_key(k, 0)),
        jax.random.uniform(derive_key(k, 1))])))(keys), np.float64)
    for j in range(3):
        assert _chi2(np.histogram(u[:, j], bins=20, range=(0, 1))[0]) < CHI2_1E4[19]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert abs(np.corrcoef(u[:, i], u[:, j])[0, 1]) < 5 / math.sqrt(N)
    # other key impls keep their impl and shape
    rbg = jax.random.key(0, impl="rbg")
    assert derive_key(rbg, 0).dtype == rbg.dtype
