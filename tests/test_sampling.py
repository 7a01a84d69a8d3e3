"""Sampler: process_logits vs transformers' torch logits warpers, chi-square of
sampling frequencies, greedy == an argmax loop over the full forward, stop
tokens, no recompiles, use under an outer jit; chunked token log-probs and
their gradients vs the naive [B, T, V] version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from scipy import stats
from transformers.generation.logits_process import (
    LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
    TopPLogitsWarper)

from jaxrl_lm import sampling
from jaxrl_lm.models import Decoder, ModelConfig

CFG = ModelConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_layers=2,
                  num_heads=4, num_kv_heads=2, attention_bias=True, init_std=0.4)
SETTINGS = [
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.1),
    dict(temperature=0.9, top_k=12, top_p=0.9, min_p=0.05),
    dict(temperature=2.0, top_p=0.5, min_p=0.2),
]


def hf_process(logits: np.ndarray, temperature=1.0, top_k=None, top_p=None, min_p=None):
    procs = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        procs.append(MinPLogitsWarper(min_p))
    return procs(None, torch.tensor(logits)).numpy()


@pytest.mark.parametrize("opts", SETTINGS)
def test_process_logits_matches_transformers(opts):
    logits = (3 * np.random.default_rng(0).standard_normal((32, 50))).astype(np.float32)
    want = hf_process(logits, **opts)
    got = np.asarray(sampling.process_logits(jnp.asarray(logits), **opts))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert 1 < np.isfinite(got).sum(-1).mean() < 50  # the filters actually cut something
    soft = lambda z: np.asarray(jax.nn.softmax(jnp.asarray(z), -1))
    np.testing.assert_allclose(soft(got), soft(want), atol=1e-6)


def test_sampling_frequencies_match_processed_distribution():
    opts = dict(temperature=0.8, top_k=7, top_p=0.9)
    logits = jnp.asarray(np.random.default_rng(1).standard_normal(12), jnp.float32)
    probs = np.asarray(jax.nn.softmax(sampling.process_logits(logits, **opts)), np.float64)
    probs /= probs.sum()
    n = 20000
    draw = jax.jit(lambda k: sampling.choose_tokens(jnp.broadcast_to(logits, (n, 12)), k, **opts))
    tok, lp, slp = draw(jax.random.key(0))
    counts = np.bincount(np.asarray(tok), minlength=12)
    kept = probs > 0
    assert counts[~kept].sum() == 0
    assert stats.chisquare(counts[kept], n * probs[kept]).pvalue > 1e-3
    # the same draws clearly reject the untruncated temperature-0.8 distribution
    plain = np.asarray(jax.nn.softmax(logits / 0.8), np.float64)
    plain /= plain.sum()
    assert stats.chisquare(counts, n * plain).pvalue < 1e-6
    np.testing.assert_allclose(np.asarray(slp), np.log(probs[np.asarray(tok)]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(lp), np.log(plain[np.asarray(tok)]), rtol=1e-5)


def test_draws_only_kept_tokens_at_any_vocab_size():
    """The inverse-CDF draw never returns a dropped token, including kept sets at
    the first or last id and vocab sizes that are not powers of two; with one
    kept token it always returns it."""
    rng = np.random.default_rng(3)
    for v in (2, 7, 1000, 1025):
        logits = rng.standard_normal((64, v)).astype(np.float32)
        logits[0, :] = -5.0
        logits[0, v - 1] = 5.0  # row 0 keeps only the last id under top-k 1
        logits[1, :] = -5.0
        logits[1, 0] = 5.0  # row 1 keeps only the first id
        for opts in (dict(top_k=1), dict(top_k=min(3, v)), dict(top_p=0.3)):
            processed = sampling.process_logits(jnp.asarray(logits), **opts)
            kept = np.isfinite(np.asarray(processed))
            draw = jax.jit(lambda z, k: sampling.choose_tokens(z, k, **opts)[0])
            for seed in range(4):
                tok = np.asarray(draw(jnp.asarray(logits), jax.random.key(seed)))
                assert kept[np.arange(64), tok].all(), (v, opts)
                if opts == dict(top_k=1):
                    assert tok[0] == v - 1 and tok[1] == 0


@pytest.fixture(scope="module")
def model():
    return Decoder(CFG, rngs=nnx.Rngs(0))


PROMPT = np.array([[3, 9, 4, 0, 0], [7, 1, 12, 5, 8]], np.int32)  # right-padded
LENGTHS = np.array([3, 5], np.int32)


def greedy_reference(model, n):
    """Argmax loop over the full (cache-free) forward, one row at a time.

    Sequences are right-padded to one length (causal: padding cannot affect
    earlier positions), so the forward compiles once."""
    width = PROMPT.shape[1] + n
    fwd = jax.jit(lambda m, t: m(t, jnp.arange(width, dtype=jnp.int32)[None]))
    toks, logps = [], []
    for row, length in zip(PROMPT, LENGTHS):
        seq, lp = list(row[:length]), []
        for _ in range(n):
            z = fwd(model, jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32))[0, len(seq) - 1]
            seq.append(int(jnp.argmax(z)))
            lp.append(float(jax.nn.log_softmax(z)[seq[-1]]))
        toks.append(seq[length:])
        logps.append(lp)
    return np.array(toks), np.array(logps)


def test_greedy_equals_argmax_loop_and_stop_tokens(model):
    n = 6
    ref_tok, ref_lp = greedy_reference(model, n)
    out = sampling.sample(model, PROMPT, LENGTHS, jax.random.key(0), max_new_tokens=n,
                          temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref_tok)
    np.testing.assert_allclose(np.asarray(out.logp), ref_lp, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.lengths), [n, n])
    assert not np.asarray(out.done).any()

    stop = int(ref_tok[0, 2])
    out = sampling.sample(model, PROMPT, LENGTHS, jax.random.key(0), max_new_tokens=n,
                          temperature=0.0, stop_tokens=(stop, 22), pad_id=-1)
    for b in range(2):
        hits = np.flatnonzero(ref_tok[b] == stop)
        length = hits[0] + 1 if hits.size else n
        assert int(out.lengths[b]) == length and bool(out.done[b]) == bool(hits.size)
        np.testing.assert_array_equal(np.asarray(out.tokens[b, :length]), ref_tok[b, :length])
        assert (np.asarray(out.tokens[b, length:]) == -1).all()
        assert (np.asarray(out.logp[b, length:]) == 0).all()


def test_logp_matches_token_logprobs_and_no_recompile(model):
    opts = dict(max_new_tokens=5, temperature=0.7, top_p=0.9, stop_tokens=(2,))
    out = sampling.sample(model, PROMPT, LENGTHS, jax.random.key(3), **opts)
    size = sampling.sample_jit_cache_size()
    other = Decoder(CFG, rngs=nnx.Rngs(5))  # same structure, new weights
    sampling.sample(other, PROMPT[::-1], LENGTHS[::-1], jax.random.key(4), **opts)
    assert sampling.sample_jit_cache_size() == size
    # re-score prompt + completion with the training-side log-probs at the same temperature
    seqs = np.zeros((2, 10), np.int32)
    mask = np.zeros((2, 10), np.float32)
    for b in range(2):
        n, l = int(LENGTHS[b]), int(out.lengths[b])
        seqs[b, :n + l] = np.concatenate([PROMPT[b, :n], np.asarray(out.tokens[b, :l])])
        mask[b, n:n + l] = 1
    lp = sampling.token_logprobs(model, jnp.asarray(seqs), jnp.asarray(mask), temperature=0.7)
    for b in range(2):
        n, l = int(LENGTHS[b]), int(out.lengths[b])
        np.testing.assert_allclose(np.asarray(lp[b, n:n + l]), np.asarray(out.logp[b, :l]),
                                   atol=2e-5)
    assert (np.asarray(out.sampling_logp) >= np.asarray(out.logp) - 1e-5).all()


def test_sample_inside_outer_jit(model):
    graphdef, state = nnx.split(model)
    opts = dict(max_new_tokens=4, temperature=1.0, top_k=5)

    @jax.jit
    def run(state, key):
        keys = jax.random.split(key, 2)  # a vmap over two "turns"
        return jax.vmap(lambda k: sampling.sample((graphdef, state), PROMPT, LENGTHS, k,
                                                  **opts).tokens)(keys)

    got = run(state, jax.random.key(7))
    keys = jax.random.split(jax.random.key(7), 2)
    for i in range(2):
        want = sampling.sample(model, PROMPT, LENGTHS, keys[i], **opts).tokens
        np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(want))


def test_batch_sharded_sample_equals_unsharded(model):
    """Rows split over a 1-D data mesh (weights replicated) sample exactly what one
    device does with the same key, and the outputs stay split by row."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    n_dev = min(4, len(jax.devices()))
    if n_dev < 2:
        pytest.skip("needs >= 2 devices (conftest sets 8 CPU devices)")
    rng = np.random.default_rng(4)
    prompt = rng.integers(1, CFG.vocab_size, (8, 6)).astype(np.int32)
    lengths = rng.integers(1, 7, 8).astype(np.int32)
    prompt[np.arange(6)[None, :] >= lengths[:, None]] = 0
    opts = dict(max_new_tokens=5, temperature=0.9, top_p=0.9, stop_tokens=(2,))
    want = sampling.sample(model, prompt, lengths, jax.random.key(11), **opts)
    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
    rows = NamedSharding(mesh, P("data"))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    got = sampling.sample((graphdef, state), jax.device_put(prompt, rows),
                          jax.device_put(lengths, rows), jax.random.key(11), **opts)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
    np.testing.assert_allclose(np.asarray(got.logp), np.asarray(want.logp), atol=1e-5)
    assert got.tokens.sharding.is_equivalent_to(rows, 2)
    assert len(got.tokens.sharding.device_set) == n_dev


def test_sample_sharded_runs_one_loop_per_device(model):
    """sample_sharded: device i's block of rows is exactly `sample` on those rows
    with key fold_in(key, i); a second call reuses the compiled program; rows
    that do not divide over the axis, or an unknown axis, are refused first."""
    from jax.sharding import Mesh

    n_dev = min(4, len(jax.devices()))
    if n_dev < 2:
        pytest.skip("needs >= 2 devices (conftest sets 8 CPU devices)")
    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
    rng = np.random.default_rng(5)
    prompt = rng.integers(1, CFG.vocab_size, (2 * n_dev, 6)).astype(np.int32)
    lengths = rng.integers(1, 7, 2 * n_dev).astype(np.int32)
    opts = dict(max_new_tokens=6, temperature=0.8, top_k=8, stop_tokens=(2, 5))
    key = jax.random.key(21)
    got = sampling.sample_sharded(model, prompt, lengths, key, mesh=mesh, **opts)
    assert len(got.tokens.sharding.device_set) == n_dev
    for i in range(n_dev):
        rows = slice(2 * i, 2 * i + 2)
        want = sampling.sample(model, prompt[rows], lengths[rows], jax.random.fold_in(key, i),
                               **opts)
        for name in ("tokens", "lengths", "done"):
            np.testing.assert_array_equal(np.asarray(getattr(got, name)[rows]),
                                          np.asarray(getattr(want, name)), err_msg=name)
        np.testing.assert_allclose(np.asarray(got.logp[rows]), np.asarray(want.logp), atol=1e-5)
    # rows stop on their own: some stopped early, some ran to max_new_tokens
    assert np.asarray(got.done).any() and not np.asarray(got.done).all()
    before = sampling._sharded_program.cache_info().currsize
    sampling.sample_sharded(model, prompt[::-1], lengths[::-1], jax.random.key(1), mesh=mesh,
                            **opts)
    assert sampling._sharded_program.cache_info().currsize == before
    with pytest.raises(ValueError, match="must divide by mesh axis 'data'"):
        sampling.sample_sharded(model, prompt[:3], lengths[:3], key, mesh=mesh, **opts)
    with pytest.raises(ValueError, match="axis='rows'"):
        sampling.sample_sharded(model, prompt, lengths, key, mesh=mesh, axis="rows", **opts)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        sampling.sample_sharded(model, prompt, lengths, key, mesh=mesh,
                                **dict(opts, max_new_tokens=0))


def test_chunked_logprobs_and_grads_equal_naive(model):
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 23, (3, 7)), jnp.int32)
    mask = jnp.asarray(rng.random((3, 7)) < 0.7, jnp.float32)
    graphdef, state = nnx.split(model)
    pos = jnp.broadcast_to(jnp.arange(7, dtype=jnp.int32), (3, 7))

    def naive(state):
        z = nnx.merge(graphdef, state)(tokens, pos) / 1.3
        lp = jnp.take_along_axis(jax.nn.log_softmax(z[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
        return jnp.concatenate([jnp.zeros((3, 1)), lp], 1) * mask

    def chunked(state):
        return sampling.token_logprobs(nnx.merge(graphdef, state), tokens, mask,
                                       temperature=1.3, chunk_size=5)

    np.testing.assert_allclose(np.asarray(jax.jit(chunked)(state)),
                               np.asarray(jax.jit(naive)(state)), atol=1e-5)
    weights = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
    g_naive = jax.jit(jax.grad(lambda s: (naive(s) * weights).sum()))(state)
    g_chunk = jax.jit(jax.grad(lambda s: (chunked(s) * weights).sum()))(state)
    for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_naive)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=1.5), "top_p"), (dict(top_k=0), "top_k"), (dict(min_p=-0.1), "min_p"),
    (dict(temperature=-1.0), "temperature"), (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_options_raise(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling.sample(model, PROMPT, LENGTHS, jax.random.key(0),
                        **{"max_new_tokens": 3, **kwargs})
