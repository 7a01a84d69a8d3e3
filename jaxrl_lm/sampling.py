"""Jitted sampling with a preallocated KV cache, logits processing, chunked token log-probs.

    out = sample(model, prompt_ids, prompt_lengths, key, max_new_tokens=64,
                 temperature=0.8, top_p=0.95, stop_tokens=(eos_id,))

Prompts are RIGHT-padded: row b's prompt is prompt_ids[b, :prompt_lengths[b]],
the rest is ignored. Cache slot s holds the token at position s, so generated
token i of row b sits at position prompt_lengths[b] + i and overwrites the
padding slots (which no query ever attends before they are overwritten).

The model is split into (graphdef, state) at the jit boundary; the sampling
options are static. Calls with the same shapes, options and model structure
reuse one compiled program. `sample` is a pure function of (model state,
arrays, key), so it can also be called inside an outer jit/vmap/scan.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = -jnp.inf


class Samples(NamedTuple):
    tokens: jax.Array  # [B, N] int32 generated ids; pad_id after a row's end
    logp: jax.Array  # [B, N] f32 log-prob of each token under the temperature-scaled model
    #                  log softmax(logits / T) (T = 1 when greedy): what RL ratios need and
    #                  what `token_logprobs(..., temperature=T)` recomputes; 0 after the end
    lengths: jax.Array  # [B] int32 generated tokens, counting the stop token
    sampling_logp: jax.Array  # [B, N] f32 log-prob under the processed (top-k/p, min-p)
    #                           distribution actually sampled from; 0 for greedy and after the end
    done: jax.Array  # [B] bool: the row emitted a stop token (False: hit max_new_tokens)


# -- logits processing ---------------------------------------------------------

def _check_options(temperature, top_k, top_p, min_p) -> None:
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature={temperature!r}: must be a float >= 0 (0 = greedy)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: must be None or an int >= 1")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p={top_p!r}: must be None or a float in (0, 1]")
    if min_p is not None and not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p={min_p!r}: must be None or a float in [0, 1]")


def _top_p_removed(p: jax.Array, top_p: float) -> jax.Array:
    """Bool [..., V]: the tokens top-p drops from probabilities p.

    Sorted ascending, the dropped tokens are the prefix whose cumulative mass is
    <= 1 - top_p, i.e. {i : M(p_i) <= 1 - top_p} with M(t) = sum_{p_j <= t} p_j.
    M is monotone, so the cut t* = max{t : M(t) <= 1 - top_p} is found exactly
    by a binary search over the bits of float32 t in [0, 2) (non-negative floats
    order as their bit patterns): 30 masked sums over V instead of a sort over V
    per row, several times cheaper on CPU. The largest probability is always kept.
    """
    budget = 1.0 - top_p

    def bit(i, cut):  # try setting bit 29 - i of the cut's bit pattern
        trial = cut | jnp.left_shift(jnp.int32(1), 29 - i)
        t = jax.lax.bitcast_convert_type(trial, jnp.float32)
        mass = jnp.sum(jnp.where(p <= t, p, 0.0), -1, keepdims=True)
        return jnp.where(mass <= budget, trial, cut)

    cut = jax.lax.fori_loop(0, 30, bit, jnp.zeros(p.shape[:-1] + (1,), jnp.int32))
    t = jax.lax.bitcast_convert_type(cut, jnp.float32)
    return (p <= t) & (p < p.max(-1, keepdims=True))


def process_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None) -> jax.Array:
    """Float32 logits [..., V] of the sampling distribution; -inf outside the kept set.

    Applied in transformers' order, each keeping at least one token:
      temperature  z / T; T == 0 keeps only the argmax (greedy)
      top-k        keep z >= the k-th largest (ties at the cut are kept)
      top-p        (Holtzman et al. 2020) sort ascending, drop tokens whose
                   cumulative probability is <= 1 - top_p
      min-p        (Nguyen et al. 2024) keep p >= min_p * max p
    """
    _check_options(temperature, top_k, top_p, min_p)
    z = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.where(jax.nn.one_hot(_argmax(z), z.shape[-1], dtype=bool), z, NEG_INF)
    z = z / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, NEG_INF, z)
    if top_p is not None and top_p < 1.0:
        z = jnp.where(_top_p_removed(jax.nn.softmax(z, axis=-1), top_p), NEG_INF, z)
    if min_p is not None and min_p > 0.0:
        p = jax.nn.softmax(z, axis=-1)
        z = jnp.where(p < min_p * p.max(-1, keepdims=True), NEG_INF, z)
    return z


def _argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax(x, -1) (the first maximum) as int32, from two plain reductions:
    XLA:CPU runs argmax's (value, index) pair reduction several times slower."""
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    hit = x == x.max(-1, keepdims=True)
    return jnp.min(jnp.where(hit, iota, x.shape[-1]), -1)


def _logp_of(x: jax.Array, tok: jax.Array) -> jax.Array:
    """log softmax(x)[..., tok] without materialising the whole log-softmax."""
    return jnp.take_along_axis(x, tok[..., None], -1)[..., 0] - jax.nn.logsumexp(x, -1)


def _draw(key: jax.Array, logits_bv: jax.Array) -> jax.Array:
    """One token [B] int32 per row from softmax(logits) (-inf: never drawn).

    Inverts the CDF in token order with one uniform u per row: the token is the
    largest n with F(n) <= u * F(V), F(n) = sum_{j < n} p_j, found bit by bit
    (ceil(log2 V) masked sums). Gumbel-max would need V random numbers per row,
    which on CPU cost more than the whole search. Every F(n) in the search is
    the same masked reduction, and float addition of non-negative terms is
    monotone, so F(n + 1) > F(n) implies p_n > 0: a dropped token is never
    drawn. (Only if rounding puts u * F(V) at or past the search's own F(V) can
    the search end on a trailing zero; then the last kept token is taken.)
    """
    v = logits_bv.shape[-1]
    p = jnp.exp(logits_bv - logits_bv.max(-1, keepdims=True))
    iota = jax.lax.broadcasted_iota(jnp.int32, p.shape, p.ndim - 1)
    u = jax.random.uniform(key, p.shape[:-1] + (1,)) * p.sum(-1, keepdims=True)

    def bit(i, n):  # try setting bit (top - i) of n
        trial = n | jnp.left_shift(jnp.int32(1), top - i)
        mass = jnp.sum(jnp.where(iota < trial, p, 0.0), -1, keepdims=True)
        return jnp.where((trial < v) & (mass <= u), trial, n)

    top = max(v - 1, 1).bit_length() - 1
    n = jax.lax.fori_loop(0, top + 1, bit, jnp.zeros(p.shape[:-1] + (1,), jnp.int32))
    last_kept = jnp.max(jnp.where(p > 0, iota, -1), -1, keepdims=True)
    kept = jnp.take_along_axis(p, n, -1) > 0
    return jnp.where(kept, n, last_kept)[..., 0]


def choose_tokens(logits_bv: jax.Array, key: jax.Array, *, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  min_p: float | None = None):
    """One sampling step: (token [B] i32, logp [B] under softmax(z / T), sampling_logp [B])."""
    z = logits_bv.astype(jnp.float32)
    if temperature == 0:
        tok = _argmax(z)
        return tok, _logp_of(z, tok), jnp.zeros(tok.shape, jnp.float32)
    processed = process_logits(z, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    tok = _draw(key, processed)
    return tok, _logp_of(z / temperature, tok), _logp_of(processed, tok)


# -- sampling loop -------------------------------------------------------------

class _Loop(NamedTuple):
    i: jax.Array  # [] int32 step
    cache: object  # KVCache: per layer, keys [B, K, S/32, Hd, 32] and values [B, K, S, Hd]
    logits: jax.Array  # [B, V] f32 next-token logits
    tokens: jax.Array  # [B, N] int32
    logp: jax.Array  # [B, N] f32
    sampling_logp: jax.Array  # [B, N] f32
    lengths: jax.Array  # [B] int32
    done: jax.Array  # [B] bool
    key: jax.Array


def _sample_impl(graphdef, state, prompt_bp, lengths_b, key, *, max_new_tokens, temperature,
                 top_k, top_p, min_p, stop_tokens, pad_id):
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    model = nnx.merge(graphdef, state)
    b, p = prompt_bp.shape
    n = max_new_tokens
    h, cache = model.prefill(prompt_bp, p + n)
    last = model.logits_from_hidden(h[jnp.arange(b), lengths_b - 1])
    stops = jnp.asarray(stop_tokens, jnp.int32).reshape(-1)
    layers = model.layer_params()  # sliced here, once, not on every step

    def body(s: _Loop) -> _Loop:
        key, sub = jax.random.split(s.key)
        tok, lp, slp = choose_tokens(s.logits, sub, **options)
        tok = jnp.where(s.done, pad_id, tok)
        lp, slp = jnp.where(s.done, 0.0, lp), jnp.where(s.done, 0.0, slp)
        done = s.done | jnp.any(tok[:, None] == stops[None, :], -1)
        pos = (lengths_b + s.i)[:, None]
        logits, cache = model(tok[:, None], pos, cache=s.cache, layers=layers)
        return _Loop(s.i + 1, cache, logits[:, 0], s.tokens.at[:, s.i].set(tok),
                     s.logp.at[:, s.i].set(lp), s.sampling_logp.at[:, s.i].set(slp),
                     s.lengths + (~s.done).astype(jnp.int32), done, key)

    def cond(s: _Loop) -> jax.Array:
        return (s.i < n) & ~jnp.all(s.done)

    zeros = jnp.zeros((b, n), jnp.float32)
    init = _Loop(jnp.int32(0), cache, last, jnp.full((b, n), pad_id, jnp.int32), zeros, zeros,
                 jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), key)
    out = jax.lax.while_loop(cond, body, init)
    return Samples(out.tokens, out.logp, out.lengths, out.sampling_logp, out.done)


# The KV cache and output buffers are allocated inside the program and updated
# in place by the while_loop; prompts/lengths are the caller's and not donated.
_sample_jit = jax.jit(_sample_impl, static_argnums=(0,),
                      static_argnames=("max_new_tokens", "temperature", "top_k", "top_p",
                                       "min_p", "stop_tokens", "pad_id"))


def _check_call(prompt_ids, prompt_lengths, max_new_tokens, temperature, top_k, top_p,
                min_p) -> None:
    """The argument checks `sample` and `sample_sharded` make before tracing."""
    _check_options(temperature, top_k, top_p, min_p)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
    chex.assert_rank(prompt_ids, 2)
    chex.assert_shape(prompt_lengths, (prompt_ids.shape[0],))


def sample(model, prompt_ids: jax.Array, prompt_lengths: jax.Array, key: jax.Array, *,
           max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, min_p: float | None = None,
           stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> Samples:
    """Sample up to `max_new_tokens` per right-padded prompt; see `Samples`.

    model: an nnx Decoder or a (graphdef, state) pair. prompt_ids [B, P] int32,
    prompt_lengths [B] int32 in [1, P]. temperature == 0 is greedy. A row stops
    after emitting any of `stop_tokens`; later slots hold `pad_id`.
    """
    _check_call(prompt_ids, prompt_lengths, max_new_tokens, temperature, top_k, top_p, min_p)
    stop_tokens = tuple(int(t) for t in stop_tokens)
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    return _sample_jit(graphdef, state, jnp.asarray(prompt_ids, jnp.int32),
                       jnp.asarray(prompt_lengths, jnp.int32), key,
                       max_new_tokens=max_new_tokens, temperature=float(temperature),
                       top_k=top_k, top_p=top_p, min_p=min_p,
                       stop_tokens=stop_tokens, pad_id=int(pad_id))


def sample_sharded(model, prompt_ids: jax.Array, prompt_lengths: jax.Array, key: jax.Array, *,
                   mesh: jax.sharding.Mesh, axis: str = "data", max_new_tokens: int,
                   temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None,
                   stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> Samples:
    """`sample` with the rows split over `mesh`'s `axis`, one decode loop per device.

    Each device runs `sample` on its block of rows with key fold_in(key, i)
    (i: its index along `axis`) and the weights replicated, under shard_map: its
    loop stops when its own rows are done, with no cross-device exchange per
    step. (`sample` on batch-sharded inputs also runs, but its one loop must agree
    on "all rows done" across devices after every token.) On a CPU split into XLA
    host devices this runs one loop per core. Outputs are split by row over
    `axis`. The row count must divide by the axis size.
    """
    _check_call(prompt_ids, prompt_lengths, max_new_tokens, temperature, top_k, top_p, min_p)
    if axis not in mesh.shape:
        raise ValueError(f"axis={axis!r}: not an axis of the mesh {dict(mesh.shape)}")
    rows, n_dev = prompt_ids.shape[0], mesh.shape[axis]
    if rows % n_dev:
        raise ValueError(f"prompt_ids has {rows} rows: must divide by mesh axis {axis!r} "
                         f"of size {n_dev}")
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    opts = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
                top_p=top_p, min_p=min_p, stop_tokens=tuple(int(t) for t in stop_tokens),
                pad_id=int(pad_id))
    fn = _sharded_program(graphdef, mesh, axis, tuple(sorted(opts.items())))
    return fn(state, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32),
              key)


@functools.lru_cache(maxsize=32)
def _sharded_program(graphdef, mesh, axis: str, opts: tuple):
    """The jitted shard_map of `sample` for one (model structure, mesh, options)."""
    from jax.sharding import PartitionSpec

    def per_device(state, ids, lengths, key):
        k = jax.random.fold_in(key, jax.lax.axis_index(axis))
        return sample((graphdef, state), ids, lengths, k, **dict(opts))

    rows = PartitionSpec(axis)
    # check_vma off: the loops inside `sample` (top-p's bisection scan, the decode
    # while_loop) start from constants that do not vary over `axis` and carry
    # values that do, which the varying-axes check refuses as unequal carry types
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), rows, rows,
                                                                  PartitionSpec()),
                                 out_specs=rows, check_vma=False))


sample_jit_cache_size = _sample_jit._cache_size  # compiled programs held (tests, benches)


# -- token log-probs for training ------------------------------------------------

def token_logprobs_from_hidden(h_btd: jax.Array, w_dv: jax.Array, tokens_bt: jax.Array,
                               mask_bt: jax.Array, *, temperature: float = 1.0,
                               chunk_size: int = 256, softcap: float | None = None) -> jax.Array:
    """logp[b, t] = log softmax(h[b, t-1] W / T)[tokens[b, t]] * mask[b, t]; logp[:, 0] = 0.

    softcap: the model's `config.final_softcap` (Gemma 2): logits are c * tanh(hW / c)
    before the temperature, as `Decoder.logits_from_hidden` computes them.

    The B*(T-1) predictions are processed `chunk_size` at a time under
    jax.checkpoint in a lax.map, so at most [chunk_size, V] logits (and their
    gradient) exist at once; the backward pass recomputes each chunk.
    """
    chex.assert_rank([h_btd, w_dv, tokens_bt, mask_bt], [3, 2, 2, 2])
    b, t, d = h_btd.shape
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: must be an int >= 1")
    n = b * (t - 1)
    c = min(chunk_size, max(n, 1))
    pad = (-n) % c
    h = jnp.pad(h_btd[:, :-1].reshape(n, d), ((0, pad), (0, 0))).reshape(-1, c, d)
    tgt = jnp.pad(tokens_bt[:, 1:].reshape(n), (0, pad)).reshape(-1, c)

    @jax.checkpoint
    def chunk(args):
        h_cd, tgt_c = args
        z = jnp.einsum("cd,dv->cv", h_cd, w_dv.astype(h_cd.dtype),
                       preferred_element_type=jnp.float32)
        if softcap is not None:
            z = jnp.tanh(z / softcap) * softcap
        z = z / temperature
        picked = jnp.take_along_axis(z, tgt_c[:, None], -1)[:, 0]
        return picked - jax.nn.logsumexp(z, -1)

    lp = jax.lax.map(chunk, (h, tgt)).reshape(-1)[:n].reshape(b, t - 1)
    lp = jnp.concatenate([jnp.zeros((b, 1), lp.dtype), lp], axis=1)
    return lp * mask_bt.astype(lp.dtype)


def token_logprobs(model, tokens_bt: jax.Array, mask_bt: jax.Array, *, temperature: float = 1.0,
                   chunk_size: int = 256, positions_bt: jax.Array | None = None,
                   remat: bool = False) -> jax.Array:
    """Per-token log-probs [B, T] f32 of `tokens` under softmax(logits / temperature).

    Entry t scores tokens[:, t] given tokens[:, :t]; entry 0 and entries with
    mask == 0 are 0. Positions default to 0..T-1 (right padding).
    """
    chex.assert_rank([tokens_bt, mask_bt], 2)
    if positions_bt is None:
        positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1], dtype=jnp.int32),
                                        tokens_bt.shape)
    h = model.hidden_states(tokens_bt, positions_bt, remat=remat)
    return token_logprobs_from_hidden(h, model.unembedding(), tokens_bt, mask_bt,
                                      temperature=temperature, chunk_size=chunk_size,
                                      softcap=model.config.final_softcap)
