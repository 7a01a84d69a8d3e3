"""Grouped-query attention with and without the KV cache, and the cache layout.

Split from `layers.py` (the rest of a decoder block): everything here sees
keys and values, including the optional per-family extras that change which
keys a query sees (the sliding window of Mistral and Gemma 2/3) and how scores
are formed (Gemma 2's query scale and tanh soft-capping). Each extra is a
static argument, so a model without it compiles to the plain computation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KEY_BLOCK = 32  # cache slots per key block; cache lengths are rounded up to a multiple


class KVCache(NamedTuple):
    """Preallocated keys/values, one buffer per layer; slot s holds the token at position s.

    k: L-tuple of [B, K, S/C, Hd, C] compute dtype, rotated keys in blocks of
       C = KEY_BLOCK slots: slot s is k[b, :, s // C, :, s % C].
    v: L-tuple of [B, K, S, Hd] compute dtype.
    S is the requested length rounded up to a multiple of C; slots past a
    row's position are masked, so the extra ones are never attended. A sliding
    layer keeps all S slots too and masks those older than its window.

    One buffer per layer: the cached forward runs its layers unrolled and each
    reads and updates its own buffer in place (on XLA:CPU a layer slice of one
    stacked [L, ...] cache is a copy of that layer on every decode step). The
    layouts make both decode contractions read their cache operand as plain
    [contracted, C or Hd] matrices, batched over leading axes only: q.k per
    key block ([G, Hd] x [Hd, C]) and probs.v over all slots ([G, S] x [S, Hd]).
    On XLA:CPU this ran 2-3x faster than contracting over a minor axis
    ([S, Hd] keys) or producing all S scores from one [Hd, S] matrix.
    """
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def cache_slots(length: int) -> int:
    """Slots a cache of `length` positions holds (rounded up to whole key blocks)."""
    return -(-length // KEY_BLOCK) * KEY_BLOCK


def causal_mask(q_pos_bt: jax.Array, k_pos_bs: jax.Array, window=None) -> jax.Array:
    """Bool [B, T, S]: query t may attend key s iff k_pos <= q_pos and, with a
    window W (a static int or a traced scalar), q_pos - k_pos < W: the query and
    the W - 1 positions before it (transformers' sliding-window mask)."""
    q, k = q_pos_bt[:, :, None], k_pos_bs[:, None, :]
    mask = k <= q
    if window is not None:
        mask = mask & (q - k < window)
    return mask


def _scores(scores: jax.Array, scale: float, softcap: float | None) -> jax.Array:
    """q.k -> scaled scores, soft-capped as c * tanh(s / c) when softcap = c (Gemma 2)."""
    scores = scores * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    return scores


def attention(q_bthd: jax.Array, k_bksd: jax.Array, v_bksd: jax.Array,
              mask_bts: jax.Array, *, scale: float, softcap: float | None = None) -> jax.Array:
    """softmax(scale * q k^T (soft-capped) + mask) v with grouped-query heads
    (Ainslie et al. 2023).

    Query head h reads key/value head h // (H // K), HF's repeat_kv order.
    mask_bts is True where query t may attend key slot s.
    """
    b, t, h, hd = q_bthd.shape
    kh = k_bksd.shape[1]
    q = q_bthd.reshape(b, t, kh, h // kh, hd)
    scores = _scores(jnp.einsum("btkgd,bksd->bkgts", q, k_bksd,
                                preferred_element_type=jnp.float32), scale, softcap)
    scores = jnp.where(mask_bts[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksd.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v_bksd)
    return out.reshape(b, t, h, hd)


def write_cache(cache_k: jax.Array, cache_v: jax.Array, k_btkd: jax.Array, v_btkd: jax.Array,
                start_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row b's T new keys/values go to slots start_b[b]..+T-1 of one layer's buffers
    (see `KVCache`); one in-place scatter each."""
    b, t = k_btkd.shape[:2]
    c = cache_k.shape[-1]
    rows = jnp.arange(b)[:, None]
    slots = start_b[:, None] + jnp.arange(t, dtype=start_b.dtype)[None, :]
    # indices [B, T] around the sliced axes: both updates are [B, T, K, Hd], as given
    cache_k = cache_k.at[rows, :, slots // c, :, slots % c].set(
        k_btkd.astype(cache_k.dtype), mode="promise_in_bounds")
    cache_v = cache_v.at[rows, :, slots].set(v_btkd.astype(cache_v.dtype),
                                             mode="promise_in_bounds")
    return cache_k, cache_v


def cached_attention(q_bthd: jax.Array, k_bkndc: jax.Array, v_bksd: jax.Array,
                     mask_bts: jax.Array, *, scale: float,
                     softcap: float | None = None) -> jax.Array:
    """`attention` against one layer's cache buffers (see `KVCache`).

    The G query heads of a key head and the T queries form one [G*T, Hd]
    matrix per (row, key head), so for decode (T = 1) both contractions are
    plain products with no unit axes (XLA:CPU lays those out as slower
    transposed products); q.k runs per key block, batched over (row, key
    head, block), and the softmax is over all S slots."""
    b, t, h, hd = q_bthd.shape
    kh, n, _, c = k_bkndc.shape[1:]
    g = h // kh
    q = q_bthd.reshape(b, t, kh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kh, 1, g * t, hd)
    q = jnp.broadcast_to(q, (b, kh, n, g * t, hd))
    scores = _scores(jnp.einsum("bknmd,bkndc->bknmc", q, k_bkndc,
                                preferred_element_type=jnp.float32), scale, softcap)
    scores = scores.transpose(0, 1, 3, 2, 4).reshape(b, kh, g * t, n * c)
    mask = jnp.broadcast_to(mask_bts[:, None], (b, g) + mask_bts.shape[1:])
    scores = jnp.where(mask.reshape(b, 1, g * t, -1), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksd.dtype)
    out = jnp.einsum("bkms,bksd->bkmd", probs, v_bksd)
    return out.reshape(b, kh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
