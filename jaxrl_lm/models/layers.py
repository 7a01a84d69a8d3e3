"""Pure array functions for the decoder: RMSNorm, RoPE, grouped-query attention,
gated MLP, and one decoder block. `decoder.py` holds the NNX module around them.

All functions take per-layer parameter arrays and compute in the dtype of `x`,
with the numerically touchy parts (norm statistics, RoPE angles, softmax) in
float32, as the HF reference implementations do.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_lm.models.config import ModelConfig


class KVCache(NamedTuple):
    """Preallocated keys/values for all layers; slot s holds the token at position s.

    k: [L, B, K, S, Hd] compute dtype, rotated keys.
    v: [L, B, K, S, Hd] compute dtype.
    Slots are the second-to-last axis so that decode attention contracts each
    (row, kv head)'s [S, Hd] block as it is stored, with no per-step transpose.
    """
    k: jax.Array
    v: jax.Array


def rms_norm(x: jax.Array, w: jax.Array, *, eps: float, offset: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * (offset + w)   (Zhang & Sennrich 2019).

    offset = 1 is Gemma's convention (weights stored as w - 1).
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)


def rope(x_btnd: jax.Array, positions_bt: jax.Array, *, theta: float) -> jax.Array:
    """Rotary embedding (Su et al. 2021) in HF's rotate-half layout.

    Feature i (< Hd/2) is paired with feature i + Hd/2 and rotated by angle
    pos * theta^(-2i/Hd), so HF checkpoints load without permuting q/k rows.
    """
    hd = x_btnd.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Hd/2]
    cos = jnp.cos(ang)[:, :, None, :]
    sin = jnp.sin(ang)[:, :, None, :]
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


def _write(cache_lbksd: jax.Array, layer: jax.Array, new_btkd: jax.Array,
           start_b: jax.Array) -> jax.Array:
    """Layer `layer`, row b: the T new entries go to slots start_b[b]..+T-1, in place
    in the all-layer cache (one scatter of B*T rows; nothing else is copied)."""
    b, t = new_btkd.shape[:2]
    rows = jnp.arange(b)[:, None]
    slots = start_b[:, None] + jnp.arange(t, dtype=start_b.dtype)[None, :]
    # indices [B, T] around the K slice: the update is [B, T, K, Hd], as new_btkd
    return cache_lbksd.at[layer, rows, :, slots].set(new_btkd.astype(cache_lbksd.dtype),
                                                      mode="promise_in_bounds")


def block(cfg: ModelConfig, x_btd: jax.Array, p: dict, positions_bt: jax.Array,
          cache_kv: tuple[jax.Array, jax.Array] | None, layer: jax.Array | int = 0):
    """One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x)).

    Without a cache the keys are this call's T tokens; query t attends key u iff
    positions[b, u] <= positions[b, t]. With a cache (the all-layer k, v:
    [L, B, K, S, Hd]) this block's new keys are written to layer `layer` at
    slots positions[b, 0] .. positions[b, 0] + T - 1 and query t attends slot s
    iff s <= positions[b, t]. Returns (x_btd, updated (k, v) or None).
    """
    dt = x_btd.dtype
    b, t, d = x_btd.shape
    h = rms_norm(x_btd, p["attn_norm"], eps=cfg.rms_norm_eps, offset=cfg.norm_offset)
    q, k, v = (_proj(h, p[name].astype(dt)) for name in ("q_proj", "k_proj", "v_proj"))
    if cfg.attention_bias:
        q, k, v = (q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt),
                   v + p["v_bias"].astype(dt))
    q = rope(q, positions_bt, theta=cfg.rope_theta)
    k = rope(k, positions_bt, theta=cfg.rope_theta)
    if cache_kv is None:
        mask = positions_bt[:, None, :] <= positions_bt[:, :, None]
        k, v, new_kv = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), None
    else:
        ck, cv = cache_kv
        ck = _write(ck, layer, k, positions_bt[:, 0])
        cv = _write(cv, layer, v, positions_bt[:, 0])
        new_kv = (ck, cv)
        k, v = ck[layer].astype(dt), cv[layer].astype(dt)
        slots = jnp.arange(ck.shape[3], dtype=positions_bt.dtype)
        mask = slots[None, None, :] <= positions_bt[:, :, None]
    o = attention(q, k, v, mask)
    w_o = p["o_proj"].astype(dt)
    o = (o.reshape(b * t, -1) @ w_o.reshape(-1, d)).reshape(b, t, d)
    if cfg.attention_out_bias:
        o = o + p["o_bias"].astype(dt)
    x_btd = x_btd + o
    h = rms_norm(x_btd, p["mlp_norm"], eps=cfg.rms_norm_eps, offset=cfg.norm_offset)
    return x_btd + gated_mlp(h.reshape(b * t, d), p, cfg.activation).reshape(b, t, d), new_kv
