"""`jaxrl-lm bench envs` runs end to end at tiny sizes (a smoke test so the
benchmark does not rot; it times nothing), and its random-legal-action
sampler is uniform over the legal actions."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.bench import envs as bench
from jaxrl_lm.cli import main as cli_main


@pytest.mark.parametrize("rng", bench.RNGS)
def test_quick_json(capsys, rng):
    assert cli_main(["bench", "envs", "--quick", "--json", "--envs", "bandit", "--rng", rng]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rng"] == rng
    rows = {r["env"]: r for r in out["step_rows"]}
    assert set(rows) == {"null", "pgx tic_tac_toe", "gymnax BernoulliBandit",
                         "bandit k=2 bernoulli", "bandit"}
    assert all(r["steps_per_s"] > 0 and r["compile_s"] > 0 for r in rows.values())
    mine = rows["bandit k=2 bernoulli"]
    assert mine["baseline"] == "gymnax BernoulliBandit"
    assert mine["ratio"] == pytest.approx(
        mine["steps_per_s"] / rows["gymnax BernoulliBandit"]["steps_per_s"])
    (text,) = out["text_rows"]
    assert text["env"] == "bandit" and text["renders_per_s"] > 0 and text["parses_per_s"] > 0
    assert text["prompt_len"] % 64 == 0


def test_hashed_draws_are_uniform_distinct_and_uncorrelated():
    """The default harness's per-step draws: action bits uniform (chi-square
    of the top and the low 4 bits), every (env, step) key distinct, and
    consecutive steps' bits of one env uncorrelated."""
    b, t = 4096, 16
    data = jax.random.key_data(jax.random.split(jax.random.key(0), b)).astype(jnp.uint32)
    words, bits = jax.vmap(bench.hashed_draws, (None, 0))(data, jnp.arange(t, dtype=jnp.uint32))
    words, bits = np.asarray(words), np.asarray(bits).astype(np.int64)  # [t, b, 2], [t, b]
    assert words.shape == (t, b, 2) and bits.shape == (t, b)
    n = t * b
    for bins in (bits >> 28, bits & 15):  # Pearson chi-square, 15 dof, P = 0.001: 37.70
        counts = np.bincount(bins.reshape(-1), minlength=16)
        assert ((counts - n / 16) ** 2 / (n / 16)).sum() < 37.70
    pairs = words.reshape(n, 2).astype(np.uint64)
    assert len(np.unique(pairs[:, 0] << np.uint64(32) | pairs[:, 1])) == n
    u = bits / 2.0**32
    corr = np.corrcoef(u[:-1].reshape(-1), u[1:].reshape(-1))[0, 1]
    assert abs(corr) < 5 / np.sqrt(n)
    # a harness key is a valid key of the seeds' impl
    keys = jax.random.wrap_key_data(jnp.asarray(words[0]), impl=jax.random.key_impl(
        jax.random.key(0)))
    assert jax.random.uniform(keys[0]).shape == ()


def test_bad_arguments():
    with pytest.raises(ValueError, match="--envs"):
        bench.main(["--envs", "nope"])
    with pytest.raises(ValueError, match="--batch"):
        bench.main(["--batch", "0"])
    with pytest.raises(ValueError, match="--rng"):
        bench.harness(None, None, None, None, 1, rng="philox")


@pytest.mark.parametrize("size,illegal", [
    (9, [1, 2, 4, 6, 7]),  # rank path
    (300, list(range(0, 300, 29))),  # rejection path, dense mask
    (300, list(range(4, 300))),  # rejection path, sparse: mostly the rank fallback
])
def test_random_legal_is_uniform_over_legal(size, illegal):
    mask = np.ones(size, bool)
    mask[illegal] = False
    legal = np.flatnonzero(mask)
    n = 60 * len(legal)
    acts = np.concatenate([np.asarray(jax.jit(bench.random_legal)(
        jax.random.key(i), jnp.asarray(np.broadcast_to(mask, (n // 10, size))))) for i in range(10)])
    assert mask[acts].all()
    counts = np.bincount(acts, minlength=size)[legal]
    chi2 = ((counts - 60) ** 2 / 60).sum()
    # Pearson chi-square at P = 0.001: 16.27 with 3 degrees of freedom, 367.9 with 288.
    assert chi2 < {4: 16.27, 289: 367.9}[len(legal)]
