"""Pure array functions for the decoder: RMSNorm, RoPE, grouped-query attention,
gated MLP, and one decoder block. `decoder.py` holds the NNX module around them.

All functions take per-layer parameter arrays and compute in the dtype of `x`,
with the numerically touchy parts (norm statistics, RoPE angles, softmax) in
float32, as the HF reference implementations do.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.models.config import ModelConfig


KEY_BLOCK = 32  # cache slots per key block; cache lengths are rounded up to a multiple


class KVCache(NamedTuple):
    """Preallocated keys/values, one buffer per layer; slot s holds the token at position s.

    k: L-tuple of [B, K, S/C, Hd, C] compute dtype, rotated keys in blocks of
       C = KEY_BLOCK slots: slot s is k[b, :, s // C, :, s % C].
    v: L-tuple of [B, K, S, Hd] compute dtype.
    S is the requested length rounded up to a multiple of C; slots past a
    row's position are masked, so the extra ones are never attended.

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


def rms_norm(x: jax.Array, w: jax.Array, *, eps: float, offset: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * (offset + w)   (Zhang & Sennrich 2019).

    offset = 1 is Gemma's convention (weights stored as w - 1).
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)


def _inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """theta^(-2i/Hd), i < Hd/2, as float32 (correctly rounded; a constant)."""
    return (1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)


def rope_angles(positions_bt: jax.Array, head_dim: int, *, theta: float):
    """(cos, sin), each [B, T, Hd/2] f32, of the RoPE angles pos * theta^(-2i/Hd)."""
    ang = positions_bt.astype(jnp.float32)[..., None] * _inv_freq(head_dim, theta)
    return jnp.cos(ang), jnp.sin(ang)


@functools.lru_cache(maxsize=32)
def rope_table(slots: int, head_dim: int, *, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [slots, Hd/2] f32, for positions 0..slots-1: the float32
    angles of `rope_angles`, cos/sin evaluated in float64 and rounded.

    The cached forward gathers its rows instead of evaluating cos/sin: XLA
    fuses those into every consumer, and decode attention copies q once per
    key block, so the transcendentals ran n-fold (a fifth of the decode step)."""
    ang = np.arange(slots, dtype=np.float32)[:, None] * _inv_freq(head_dim, theta)
    return (np.cos(ang.astype(np.float64)).astype(np.float32),
            np.sin(ang.astype(np.float64)).astype(np.float32))


def rope(x_btnd: jax.Array, positions_bt: jax.Array, *, theta: float,
         angles: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """Rotary embedding (Su et al. 2021) in HF's rotate-half layout.

    Feature i (< Hd/2) is paired with feature i + Hd/2 and rotated by angle
    pos * theta^(-2i/Hd), so HF checkpoints load without permuting q/k rows.
    `angles`: `rope_angles(positions_bt, Hd, theta=theta)`, computed by the caller.
    """
    hd = x_btnd.shape[-1]
    cos, sin = rope_angles(positions_bt, hd, theta=theta) if angles is None else angles
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x_btnd.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btnd.dtype)


def attention(q_bthd: jax.Array, k_bksd: jax.Array, v_bksd: jax.Array,
              mask_bts: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(Hd) + mask) v with grouped-query heads (Ainslie et al. 2023).

    Query head h reads key/value head h // (H // K), HF's repeat_kv order.
    mask_bts is True where query t may attend key slot s.
    """
    b, t, h, hd = q_bthd.shape
    kh = k_bksd.shape[1]
    q = q_bthd.reshape(b, t, kh, h // kh, hd)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k_bksd,
                        preferred_element_type=jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask_bts[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksd.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v_bksd)
    return out.reshape(b, t, h, hd)


def gated_mlp(x: jax.Array, p: dict, activation: str) -> jax.Array:
    """down(act(x W_gate) * (x W_up)): SwiGLU / GeGLU (Shazeer 2020)."""
    dt = x.dtype
    gate = x @ p["gate_proj"].astype(dt)
    if activation == "silu":
        gate = jax.nn.silu(gate)
    else:
        gate = jax.nn.gelu(gate, approximate=True)
    return (gate * (x @ p["up_proj"].astype(dt))) @ p["down_proj"].astype(dt)


def _proj(h_btd: jax.Array, w_dnh: jax.Array) -> jax.Array:
    """[B, T, D] x [D, N, Hd] -> [B, T, N, Hd] as one 2-D matmul: XLA:CPU's
    weight gradient of a matmul that contracts over two flattened dims (B, T)
    is 2-3x slower than over one."""
    b, t, d = h_btd.shape
    _, n, hd = w_dnh.shape
    return (h_btd.reshape(b * t, d) @ w_dnh.reshape(d, n * hd)).reshape(b, t, n, hd)


def _write(cache_k: jax.Array, cache_v: jax.Array, k_btkd: jax.Array, v_btkd: jax.Array,
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
                     mask_bts: jax.Array) -> jax.Array:
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
    scores = jnp.einsum("bknmd,bkndc->bknmc", q, k_bkndc,
                        preferred_element_type=jnp.float32) * (hd ** -0.5)
    scores = scores.transpose(0, 1, 3, 2, 4).reshape(b, kh, g * t, n * c)
    mask = jnp.broadcast_to(mask_bts[:, None], (b, g) + mask_bts.shape[1:])
    scores = jnp.where(mask.reshape(b, 1, g * t, -1), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksd.dtype)
    out = jnp.einsum("bkms,bksd->bkmd", probs, v_bksd)
    return out.reshape(b, kh, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


def block(cfg: ModelConfig, x_btd: jax.Array, p: dict, positions_bt: jax.Array,
          cache_kv: tuple[jax.Array, jax.Array] | None = None,
          angles: tuple[jax.Array, jax.Array] | None = None):
    """One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x)).

    Without a cache the keys are this call's T tokens; query t attends key u iff
    positions[b, u] <= positions[b, t], and the second output is this call's
    (k, v), each [B, T, K, Hd], k rotated. With a cache (this layer's buffers,
    see `KVCache`) the new keys are written at slots positions[b, 0] ..
    positions[b, 0] + T - 1, query t attends slot s iff s <= positions[b, t],
    and the second output is the updated buffers. `angles`: `rope_angles` of
    positions_bt, when the caller shares them between blocks.
    """
    dt = x_btd.dtype
    b, t, d = x_btd.shape
    h = rms_norm(x_btd, p["attn_norm"], eps=cfg.rms_norm_eps, offset=cfg.norm_offset)
    q, k, v = (_proj(h, p[name].astype(dt)) for name in ("q_proj", "k_proj", "v_proj"))
    if cfg.attention_bias:
        q, k, v = (q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt),
                   v + p["v_bias"].astype(dt))
    q = rope(q, positions_bt, theta=cfg.rope_theta, angles=angles)
    k = rope(k, positions_bt, theta=cfg.rope_theta, angles=angles)
    if cache_kv is None:
        mask = positions_bt[:, None, :] <= positions_bt[:, :, None]
        o = attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
        kv = (k, v)
    else:
        kv = _write(*cache_kv, k, v, positions_bt[:, 0])
        slots = jnp.arange(kv[1].shape[2], dtype=positions_bt.dtype)
        mask = slots[None, None, :] <= positions_bt[:, :, None]
        o = cached_attention(q, kv[0].astype(dt), kv[1].astype(dt), mask)
    w_o = p["o_proj"].astype(dt)
    o = (o.reshape(b * t, -1) @ w_o.reshape(-1, d)).reshape(b, t, d)
    if cfg.attention_out_bias:
        o = o + p["o_bias"].astype(dt)
    x_btd = x_btd + o
    h = rms_norm(x_btd, p["mlp_norm"], eps=cfg.rms_norm_eps, offset=cfg.norm_offset)
    return x_btd + gated_mlp(h.reshape(b * t, d), p, cfg.activation).reshape(b, t, d), kv
