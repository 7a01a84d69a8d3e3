"""Pure array functions for the decoder: RMSNorm, RoPE, gated MLP, and one
decoder block (attention itself is in `attention.py`). `decoder.py` holds the
NNX module around them.

All functions take per-layer parameter arrays and compute in the dtype of `x`,
with the numerically touchy parts (norm statistics, RoPE angles, softmax) in
float32, as the HF reference implementations do.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.models.attention import (KEY_BLOCK, KVCache, attention, cache_slots,  # noqa: F401
                                       cached_attention, causal_mask, write_cache)
from jaxrl_lm.models.config import ModelConfig


def rms_norm(x: jax.Array, w: jax.Array, *, eps: float, offset: float) -> jax.Array:
    """y = x / sqrt(mean(x^2) + eps) * (offset + w)   (Zhang & Sennrich 2019).

    offset = 1 is Gemma's convention (weights stored as w - 1).
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * (offset + w.astype(jnp.float32))).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def inv_freq(cfg: ModelConfig, *, local: bool = False) -> np.ndarray:
    """RoPE frequencies [Hd/2] f32 (a constant): theta^(-2i/Hd), i < Hd/2, with
    theta = rope_local_theta for a sliding layer of Gemma 3 (local=True).

    rope_type="llama3" (Llama 3.1+) rescales by wavelength w = 2 pi / f, with
    N = rope_original_max_positions: w < N / high_freq_factor keeps f; w >
    N / low_freq_factor divides f by rope_factor; in between f is blended,
    (1 - a) f / factor + a f with a = (N / w - low) / (high - low).
    Computed in float64 and rounded once.
    """
    hd = cfg.head_dim
    theta = cfg.rope_local_theta if local and cfg.rope_local_theta is not None else cfg.rope_theta
    f = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    if cfg.rope_type == "llama3":
        n, low, high = (cfg.rope_original_max_positions, cfg.rope_low_freq_factor,
                        cfg.rope_high_freq_factor)
        wavelength = 2 * math.pi / f
        a = (n / wavelength - low) / (high - low)
        blended = (1 - a) * f / cfg.rope_factor + a * f
        f = np.where(wavelength < n / high, f,
                     np.where(wavelength > n / low, f / cfg.rope_factor, blended))
    return f.astype(np.float32)


def rope_angles(positions_bt: jax.Array, freq: np.ndarray | jax.Array):
    """(cos, sin), each [B, T, Hd/2] f32, of the RoPE angles pos * freq (`inv_freq`)."""
    ang = positions_bt.astype(jnp.float32)[..., None] * freq
    return jnp.cos(ang), jnp.sin(ang)


@functools.lru_cache(maxsize=32)
def rope_table(slots: int, cfg: ModelConfig, *, local: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [slots, Hd/2] f32, for positions 0..slots-1: the float32
    angles of `rope_angles`, cos/sin evaluated in float64 and rounded.

    The cached forward gathers its rows instead of evaluating cos/sin: XLA
    fuses those into every consumer, and decode attention copies q once per
    key block, so the transcendentals ran n-fold (a fifth of the decode step)."""
    ang = np.arange(slots, dtype=np.float32)[:, None] * inv_freq(cfg, local=local)
    return (np.cos(ang.astype(np.float64)).astype(np.float32),
            np.sin(ang.astype(np.float64)).astype(np.float32))


def rope(x_btnd: jax.Array, angles: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary embedding (Su et al. 2021) in HF's rotate-half layout.

    Feature i (< Hd/2) is paired with feature i + Hd/2 and rotated by angle
    pos * freq_i, so HF checkpoints load without permuting q/k rows.
    `angles`: `rope_angles` (or rows of `rope_table`) of the tokens' positions.
    """
    hd = x_btnd.shape[-1]
    cos, sin = angles
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x_btnd.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_btnd.dtype)


def linear(x_mi: jax.Array, p: dict, name: str) -> jax.Array:
    """[M, in] -> [M, out]: x W with p[name] flattened to [in, out] (one 2-D matmul:
    XLA:CPU's weight gradient of a matmul that contracts over two flattened dims
    is 2-3x slower than over one), in x's dtype.

    With LoRA factors in p (`<name>_lora_a` [*in, r] and `<name>_lora_b`
    [r, *out], the latter already scaled by alpha / r; models/lora.py) it is
    x W + (x A) B: no merged weight is formed, so a backward holds gradients of
    A and B and of the [M, r] product only, never one of W's size."""
    dt = x_mi.dtype
    n_in = x_mi.shape[-1]
    y = x_mi @ p[name].astype(dt).reshape(n_in, -1)
    a = p.get(name + "_lora_a")
    if a is not None:
        rank = a.shape[-1]
        b = p[name + "_lora_b"].reshape(rank, -1)
        y = y + (x_mi @ a.astype(dt).reshape(n_in, rank)) @ b.astype(dt)
    return y


def gated_mlp(x: jax.Array, p: dict, activation: str) -> jax.Array:
    """down(act(x W_gate) * (x W_up)): SwiGLU / GeGLU (Shazeer 2020). x: [M, D]."""
    gate = linear(x, p, "gate_proj")
    if activation == "silu":
        gate = jax.nn.silu(gate)
    else:
        gate = jax.nn.gelu(gate, approximate=True)
    return linear(gate * linear(x, p, "up_proj"), p, "down_proj")


def block(cfg: ModelConfig, x_btd: jax.Array, p: dict, positions_bt: jax.Array,
          cache_kv: tuple[jax.Array, jax.Array] | None = None,
          angles: tuple[jax.Array, jax.Array] | None = None, window=None):
    """One pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x)); with
    post_norms (Gemma 2/3) each branch's output is normed again before the add.

    Without a cache the keys are this call's T tokens; query t attends key u iff
    positions[b, u] <= positions[b, t], and the second output is this call's
    (k, v), each [B, T, K, Hd], k rotated. With a cache (this layer's buffers,
    see `KVCache`) the new keys are written at slots positions[b, 0] ..
    positions[b, 0] + T - 1, query t attends slot s iff s <= positions[b, t],
    and the second output is the updated buffers. `window` (None, an int or a
    traced scalar): this layer's sliding window; keys W or more positions back
    are masked too. `angles`: the RoPE angles of positions_bt (default: from
    cfg's global frequencies), when the caller shares them between blocks.
    Projections are `linear`s: a target of LoRA whose factors `p` holds runs
    factored, x W + (x A) B.
    """
    dt = x_btd.dtype
    b, t, d = x_btd.shape
    norm = functools.partial(rms_norm, eps=cfg.rms_norm_eps, offset=cfg.norm_offset)
    h = norm(x_btd, p["attn_norm"])
    h2 = h.reshape(b * t, d)
    q, k, v = (linear(h2, p, name).reshape(b, t, -1, cfg.head_dim)
               for name in ("q_proj", "k_proj", "v_proj"))
    if cfg.attention_bias:
        q, k, v = (q + p["q_bias"].astype(dt), k + p["k_bias"].astype(dt),
                   v + p["v_bias"].astype(dt))
    if cfg.qk_norm:  # per head, over Hd (Qwen3, Gemma 3)
        q, k = norm(q, p["q_norm"]), norm(k, p["k_norm"])
    if angles is None:
        angles = rope_angles(positions_bt, inv_freq(cfg))
    q, k = rope(q, angles), rope(k, angles)
    scores = dict(scale=cfg.attn_scale, softcap=cfg.attn_softcap)
    if cache_kv is None:
        mask = causal_mask(positions_bt, positions_bt, window)
        o = attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask, **scores)
        kv = (k, v)
    else:
        kv = write_cache(*cache_kv, k, v, positions_bt[:, 0])
        slots = jnp.arange(kv[1].shape[2], dtype=positions_bt.dtype)[None]
        mask = causal_mask(positions_bt, slots, window)
        o = cached_attention(q, kv[0].astype(dt), kv[1].astype(dt), mask, **scores)
    o = linear(o.reshape(b * t, -1), p, "o_proj").reshape(b, t, d)
    if cfg.attention_out_bias:
        o = o + p["o_bias"].astype(dt)
    if cfg.post_norms:
        o = norm(o, p["attn_post_norm"])
    x_btd = x_btd + o
    h = norm(x_btd, p["mlp_norm"])
    m = gated_mlp(h.reshape(b * t, d), p, cfg.activation).reshape(b, t, d)
    if cfg.post_norms:
        m = norm(m, p["mlp_post_norm"])
    return x_btd + m, kv
