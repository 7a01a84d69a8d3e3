"""Chunked token log-probs from hidden states: values and gradients w.r.t. the
hidden states and the unembedding against a hand-derived float64 numpy
reference; the logprobs-memory bench runs end to end on tiny shapes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.bench import logprobs_memory
from jaxrl_lm.sampling import token_logprobs_from_hidden


def reference(h, w, tokens, mask, weights, temperature):
    """float64: logp [B, T] and the gradients of sum(weights * logp) w.r.t. h and w.

    d logp_t / d z = onehot(token) - softmax(z), with z = h_{t-1} W / T."""
    b, t, _ = h.shape
    z = np.einsum("btd,dv->btv", h[:, :-1], w) / temperature
    z = z - z.max(-1, keepdims=True)
    logsm = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tgt = tokens[:, 1:]
    lp = np.take_along_axis(logsm, tgt[..., None], -1)[..., 0] * mask[:, 1:]
    coef = (weights * mask)[:, 1:, None]  # [B, T-1, 1]
    dz = coef * (np.eye(w.shape[1])[tgt] - np.exp(logsm)) / temperature
    dh = np.zeros_like(h)
    dh[:, :-1] = np.einsum("btv,dv->btd", dz, w)
    dw = np.einsum("btd,btv->dv", h[:, :-1], dz)
    return np.concatenate([np.zeros((b, 1)), lp], 1), dh, dw


@pytest.mark.parametrize("chunk", [1, 5, 64])  # 5 leaves a padded last chunk, 64 > rows
def test_values_and_grads_match_float64_reference(chunk):
    rng = np.random.default_rng(0)
    b, t, d, v, temp = 3, 7, 6, 29, 1.3
    h = rng.standard_normal((b, t, d))
    w = rng.standard_normal((d, v))
    tokens = rng.integers(0, v, (b, t))
    mask = (rng.random((b, t)) < 0.7).astype(np.float64)
    weights = rng.standard_normal((b, t))
    want_lp, want_dh, want_dw = reference(h, w, tokens, mask, weights, temp)

    def loss(h, w):
        lp = token_logprobs_from_hidden(h, w, jnp.asarray(tokens, jnp.int32),
                                        jnp.asarray(mask, jnp.float32), temperature=temp,
                                        chunk_size=chunk)
        return (lp * jnp.asarray(weights, jnp.float32)).sum(), lp

    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    (_, lp), (dh, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        f32(h), f32(w))
    np.testing.assert_allclose(np.asarray(lp), want_lp, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dh), want_dh, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dw), want_dw, atol=2e-5)
    assert np.abs(want_dh[:, -1]).max() == 0 and np.abs(want_dw).max() > 0.1


def test_bench_runs_on_tiny_shapes(capsys):
    argv = ["--batch", "2", "--seq", "64", "--vocab", "512", "--hidden", "8", "--heads", "2",
            "--kv-heads", "1", "--intermediate", "16", "--chunk", "16", "--chunk-table", "8,32",
            "--run-seq", "16", "--json"]
    assert logprobs_memory.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["naive_logits_gb"] == pytest.approx(2 * 64 * 512 * 4 / 1e9)
    head = r["head"]
    # the [B, T-1, V] logits (258 KB) dominate the naive program, not the chunked one
    assert head["chunked_grad"]["temp_gib"] < head["naive_grad"]["temp_gib"] / 2
    assert head["temp_gib_by_chunk"]["8"] < head["temp_gib_by_chunk"]["32"]
    assert r["decoder"]["chunked_head_over_body_gib"] < r["decoder"]["naive_head_over_body_gib"]
    e = r["executed"]
    assert (e["rows"], e["chunks"]) == (30, 2) and e["seconds"] > 0 and e["rss_growth_gib"] >= 0


@pytest.mark.parametrize("flag,value", [("--chunk", "0"), ("--run-seq", "1"),
                                        ("--heads", "3")])
def test_bench_bad_flags_raise(flag, value):
    with pytest.raises(ValueError, match=flag):
        logprobs_memory.main([flag, value])
