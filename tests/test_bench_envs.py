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


def test_quick_json(capsys):
    assert cli_main(["bench", "envs", "--quick", "--json", "--envs", "bandit"]) == 0
    out = json.loads(capsys.readouterr().out)
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


def test_bad_arguments():
    with pytest.raises(ValueError, match="--envs"):
        bench.main(["--envs", "nope"])
    with pytest.raises(ValueError, match="--batch"):
        bench.main(["--batch", "0"])


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
