"""The NNX decoder shared by all families (Llama, Qwen2/3, Mistral, Gemma 1/2/3; see config.py).

Module tree and parameters (paths as in `nnx.state(model)`; logical axis names
in the `out_sharding` metadata, read by `nnx.get_partition_spec`):

    embed                  [V, D]          ("vocab", "embed")
    layers.attn_norm       [L, D]          ("layers", "norm")
    layers.q_proj          [L, D, H, Hd]   ("layers", "embed", "heads", "head_dim")
    layers.k_proj          [L, D, K, Hd]   ("layers", "embed", "kv_heads", "head_dim")
    layers.v_proj          [L, D, K, Hd]   ("layers", "embed", "kv_heads", "head_dim")
    layers.q_bias          [L, H, Hd]      ("layers", "heads", "head_dim")     if attention_bias
    layers.k_bias          [L, K, Hd]      ("layers", "kv_heads", "head_dim")  if attention_bias
    layers.v_bias          [L, K, Hd]      ("layers", "kv_heads", "head_dim")  if attention_bias
    layers.o_proj          [L, H, Hd, D]   ("layers", "heads", "head_dim", "embed")
    layers.o_bias          [L, D]          ("layers", "embed")                 if attention_out_bias
    layers.q_norm          [L, Hd]         ("layers", "head_dim")              if qk_norm
    layers.k_norm          [L, Hd]         ("layers", "head_dim")              if qk_norm
    layers.attn_post_norm  [L, D]          ("layers", "norm")                  if post_norms
    layers.mlp_norm        [L, D]          ("layers", "norm")
    layers.mlp_post_norm   [L, D]          ("layers", "norm")                  if post_norms
    layers.gate_proj       [L, D, F]       ("layers", "embed", "mlp")
    layers.up_proj         [L, D, F]       ("layers", "embed", "mlp")
    layers.down_proj       [L, F, D]       ("layers", "mlp", "embed")
    final_norm             [D]             ("norm",)
    lm_head                [D, V]          ("embed", "vocab")                  unless tie_embeddings
    value_head.kernel      [D]             ("embed",)                          if value_head
    value_head.bias        []              ()                                  if value_head

Layers are stacked on a leading L axis and run with `lax.scan` (one compiled
block, fast compiles for deep models; unrolled when L <= UNROLL_LAYERS); with
config.remat "full" or "dots" each block of the cache-free forward is a
`jax.checkpoint` (REMAT_POLICIES) whose activations the backward recomputes. HF
mapping: `q_proj.weight` [H*Hd, D] is `q_proj[l].reshape(D, H*Hd).T`;
`o_proj.weight` [D, H*Hd] is `o_proj[l].reshape(H*Hd, D).T`; MLP/lm_head weights
are transposed; norm weights are copied as stored (Gemma's are stored as w - 1,
used as 1 + w).

Calls (positions are explicit; rows are right-padded; see `layers.block`):

    model(tokens[B,T] i32, positions[B,T] i32)            -> logits [B, T, V] f32
    model(tokens, positions, cache=KVCache)               -> (logits [B,T,V] f32, KVCache)
    model.hidden_states(tokens, positions[, cache=...])   -> h [B,T,D] (after final norm)
                                                             [, KVCache]
    model.prefill(tokens[B,T] i32, length)                -> (h [B,T,D], KVCache, S = length)
    model.logits_from_hidden(h)                           -> [..., V] f32
    model.values(tokens, positions)                       -> [B, T] f32 (value head)
    model.init_cache(batch, length)                       -> zero KVCache, S = length

Without a cache the layers run as one `lax.scan`; with a cache they run
unrolled, each on its own cache buffers (see `layers.KVCache`): a decode step
then reads each layer's keys in place instead of copying a slice of a stacked
cache, at the price of compiling the block L times for the cached call.

Layers that differ (Gemma 2/3: some slide, some attend globally, Gemma 3's use
another RoPE base) get their window and RoPE frequencies as static values in
the unrolled cached forward, and as per-layer scan inputs in the layer scan.

Parameters are read as config.param_dtype whatever dtype the arrays hold: a
float32 master copy (config.master_dtype, kept by the train engine) computes
exactly what the bfloat16 params it stands for compute (a no-op otherwise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.layers import (KEY_BLOCK, KVCache, block, cache_slots, inv_freq, rms_norm,
                                    rope_angles, rope_table)

# Layer stacks up to this deep run the cache-free scan fully unrolled. On XLA:CPU the
# scan's backward zero-fills and copies stacked [L, ...] residual buffers (~40% of a
# 4-layer fwd+bwd in a profile); unrolled, a 4-layer log-prob fwd+bwd took ~11% less
# CPU time, a whole GRPO step (`bench grpo-step`) ~9% less, and compiled no slower.
# Deeper stacks keep the rolled scan's fast compile.
UNROLL_LAYERS = 8

# config.remat -> the jax.checkpoint policy of each block (what the backward may keep):
# "full" keeps only the block's input; "dots" also keeps the outputs of matmuls
# without batch dimensions (the q/k/v/o and MLP projections) and recomputes the
# norms, RoPE, attention and activations.
REMAT_POLICIES = {"full": None,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _param(key: jax.Array, shape: tuple[int, ...], names: tuple, dtype, std: float | None):
    """A Param with logical axis names; std None means zeros, "ones" via std=-1."""
    if std is None:
        value = jnp.zeros(shape, dtype)
    elif std < 0:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    # eager_sharding=False: names are metadata only; placement is the train engine's job.
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class LayerStack(nnx.Module):
    """All decoder blocks' parameters, stacked on a leading "layers" axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dt, std = cfg.storage_dtype, cfg.init_std
        norm_std = None if cfg.norm_offset == 1 else -1.0  # identity scale at init
        mk = functools.partial(_param, dtype=dt)
        self.attn_norm = mk(None, (L, D), ("layers", "norm"), std=norm_std)
        self.q_proj = mk(rngs.params(), (L, D, H, Hd), ("layers", "embed", "heads", "head_dim"), std=std)
        self.k_proj = mk(rngs.params(), (L, D, K, Hd), ("layers", "embed", "kv_heads", "head_dim"), std=std)
        self.v_proj = mk(rngs.params(), (L, D, K, Hd), ("layers", "embed", "kv_heads", "head_dim"), std=std)
        if cfg.attention_bias:
            self.q_bias = mk(None, (L, H, Hd), ("layers", "heads", "head_dim"), std=None)
            self.k_bias = mk(None, (L, K, Hd), ("layers", "kv_heads", "head_dim"), std=None)
            self.v_bias = mk(None, (L, K, Hd), ("layers", "kv_heads", "head_dim"), std=None)
        self.o_proj = mk(rngs.params(), (L, H, Hd, D), ("layers", "heads", "head_dim", "embed"), std=std)
        if cfg.attention_out_bias:
            self.o_bias = mk(None, (L, D), ("layers", "embed"), std=None)
        if cfg.qk_norm:
            self.q_norm = mk(None, (L, Hd), ("layers", "head_dim"), std=norm_std)
            self.k_norm = mk(None, (L, Hd), ("layers", "head_dim"), std=norm_std)
        if cfg.post_norms:
            self.attn_post_norm = mk(None, (L, D), ("layers", "norm"), std=norm_std)
            self.mlp_post_norm = mk(None, (L, D), ("layers", "norm"), std=norm_std)
        self.mlp_norm = mk(None, (L, D), ("layers", "norm"), std=norm_std)
        self.gate_proj = mk(rngs.params(), (L, D, F), ("layers", "embed", "mlp"), std=std)
        self.up_proj = mk(rngs.params(), (L, D, F), ("layers", "embed", "mlp"), std=std)
        self.down_proj = mk(rngs.params(), (L, F, D), ("layers", "mlp", "embed"), std=std)

    def arrays(self, dtype=None) -> dict[str, jax.Array]:
        """{name: stacked array}, the xs of the layer scan (cast to `dtype` if given)."""
        return {k: v[...] if dtype is None else v[...].astype(dtype)
                for k, v in vars(self).items() if isinstance(v, nnx.Param)}


class ValueHead(nnx.Module):
    """Scalar value v = h . w + b on the final (normed) hidden state."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt = cfg.storage_dtype
        self.kernel = _param(rngs.params(), (cfg.hidden_size,), ("embed",), dt, cfg.init_std)
        self.bias = _param(None, (), (), dt, None)
        self.param_dtype = cfg.param_dtype  # params are read as this (module docstring)

    def __call__(self, h: jax.Array) -> jax.Array:
        h32 = h.astype(jnp.float32)
        w, b = (p[...].astype(self.param_dtype).astype(jnp.float32)
                for p in (self.kernel, self.bias))
        return h32 @ w + b


def softcap_logits(z: jax.Array, cap: float | None) -> jax.Array:
    """c * tanh(z / c) (Gemma 2's final logit soft-capping); z unchanged for cap None."""
    return z if cap is None else jnp.tanh(z / cap) * cap


class Decoder(nnx.Module):
    """Decoder-only transformer; see the module docstring for the tree and calls."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.embed = _param(rngs.params(), (cfg.vocab_size, cfg.hidden_size),
                            ("vocab", "embed"), cfg.storage_dtype, cfg.init_std)
        self.layers = LayerStack(cfg, rngs=rngs)
        self.final_norm = _param(None, (cfg.hidden_size,), ("norm",), cfg.storage_dtype,
                                 None if cfg.norm_offset == 1 else -1.0)
        self.lm_head = nnx.data(None if cfg.tie_embeddings else _param(
            rngs.params(), (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
            cfg.storage_dtype, cfg.init_std))
        self.value_head = nnx.data(ValueHead(cfg, rngs=rngs) if cfg.value_head else None)

    # -- pieces ---------------------------------------------------------------
    def init_cache(self, batch: int, length: int) -> KVCache:
        """Zero buffers for positions 0..length-1 (rounded up to whole key blocks)."""
        cfg = self.config
        s = cache_slots(length)
        k_shape = (batch, cfg.num_kv_heads, s // KEY_BLOCK, cfg.head_dim, KEY_BLOCK)
        v_shape = (batch, cfg.num_kv_heads, s, cfg.head_dim)
        return KVCache(tuple(jnp.zeros(k_shape, cfg.compute_dtype) for _ in range(cfg.num_layers)),
                       tuple(jnp.zeros(v_shape, cfg.compute_dtype) for _ in range(cfg.num_layers)))

    def _read(self, param: nnx.Param) -> jax.Array:
        """A parameter's value as config.param_dtype (a float32 master copy is rounded)."""
        return param[...].astype(self.config.storage_dtype)

    def unembedding(self) -> jax.Array:
        """The [D, V] output matrix (the embedding transposed when tied)."""
        return self._read(self.embed).T if self.lm_head is None else self._read(self.lm_head)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """[..., D] final hidden states -> [..., V] float32 logits (soft-capped
        as c * tanh(z / c) with final_softcap = c, Gemma 2)."""
        w = self.unembedding()
        z = jnp.einsum("...d,dv->...v", h, w.astype(h.dtype),
                       preferred_element_type=jnp.float32)
        return softcap_logits(z, self.config.final_softcap)

    def value_from_hidden(self, h: jax.Array) -> jax.Array:
        if self.value_head is None:
            raise ValueError("this model has no value head; build it with ModelConfig(value_head=True)")
        return self.value_head(h)

    def _embed(self, tokens_bt: jax.Array) -> jax.Array:
        cfg = self.config
        x = self._read(self.embed)[tokens_bt].astype(cfg.compute_dtype)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, cfg.compute_dtype)
        return x

    def _final_norm(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        return rms_norm(x, self._read(self.final_norm), eps=cfg.rms_norm_eps,
                        offset=cfg.norm_offset)

    def _scan_layers(self, x: jax.Array, positions_bt: jax.Array, *, remat: str, keep_kv: bool):
        """All blocks as one lax.scan without a cache (each a jax.checkpoint of
        REMAT_POLICIES[remat] unless remat is "none"); also the stacked per-layer
        (k, v) [L, B, T, K, Hd] when keep_kv."""
        cfg = self.config
        # Per-layer scan inputs only where layers differ: each layer's window
        # (2**30 = global) and whether it uses the local RoPE base (Gemma 3).
        per_layer = {}
        if cfg.mixed_layers:
            per_layer["window"] = jnp.asarray([cfg.sliding_window if s else 2 ** 30
                                               for s in cfg.sliding_layers], jnp.int32)
            if cfg.rope_local_theta is not None:
                per_layer["local"] = jnp.asarray(cfg.sliding_layers)
        window = cfg.sliding_window if not cfg.mixed_layers else None  # static: same for all

        def step(x, xs):
            p, extra = xs
            angles = None
            if "local" in extra:
                freq = jnp.where(extra["local"], inv_freq(cfg, local=True), inv_freq(cfg))
                angles = rope_angles(positions_bt, freq)
            x, kv = block(cfg, x, p, positions_bt, angles=angles,
                          window=extra.get("window", window))
            return x, (kv if keep_kv else None)

        if remat != "none":
            step = jax.checkpoint(step, policy=REMAT_POLICIES[remat])
        unroll = cfg.num_layers <= UNROLL_LAYERS
        return jax.lax.scan(step, x, (self.layers.arrays(cfg.storage_dtype), per_layer),
                            unroll=unroll)

    def layer_params(self) -> tuple[dict[str, jax.Array], ...]:
        """One {name: array} per layer: the stacked parameters sliced on the layer axis.

        A loop that calls the cached forward (the sampler's decode loop) slices
        once before the loop and passes them as `layers=`: XLA:CPU does not hoist
        the slices out of a while loop, and would copy every weight every step."""
        arrays = self.layers.arrays(self.config.storage_dtype)
        return tuple({name: w[layer] for name, w in arrays.items()}
                     for layer in range(self.config.num_layers))

    def hidden_states(self, tokens_bt: jax.Array, positions_bt: jax.Array, *,
                      cache: KVCache | None = None, remat: bool | str | None = None,
                      layers: tuple[dict[str, jax.Array], ...] | None = None):
        """Final-normed hidden states [B, T, D] (compute dtype); with a cache, also
        the updated KVCache. remat (cache-free calls): a mode of config.remat for
        this call, True meaning "full"; None or False: config.remat.
        `layers` (cached calls only): `layer_params()`, sliced once by the caller."""
        if tokens_bt.ndim != 2 or positions_bt.shape != tokens_bt.shape:
            raise ValueError(f"tokens and positions must both be [B, T]; got "
                             f"{tokens_bt.shape} and {positions_bt.shape}")
        x = self._embed(tokens_bt)
        if cache is None:
            mode = "full" if remat is True else remat or self.config.remat
            if mode not in REMAT_POLICIES and mode != "none":
                raise ValueError(f"remat={remat!r}: must be a bool, None or one of "
                                 f"none, {', '.join(REMAT_POLICIES)}")
            x, _ = self._scan_layers(x, positions_bt, remat=mode, keep_kv=False)
            return self._final_norm(x)
        cfg = self.config
        slots = cache.v[0].shape[2]
        angles = {local: tuple(jnp.asarray(a)[positions_bt]  # positions < slots
                               for a in rope_table(slots, cfg, local=local))
                  for local in {cfg.layer_local_rope(i) for i in range(cfg.num_layers)}}
        new_k, new_v = [], []
        for i, (p, kv) in enumerate(zip(self.layer_params() if layers is None else layers,
                                        zip(cache.k, cache.v), strict=True)):
            x, (k, v) = block(cfg, x, p, positions_bt, kv, angles[cfg.layer_local_rope(i)],
                              cfg.layer_window(i))
            new_k.append(k)
            new_v.append(v)
        return self._final_norm(x), KVCache(tuple(new_k), tuple(new_v))

    def prefill(self, tokens_bt: jax.Array, length: int):
        """(hidden states [B, T, D], KVCache of `length` slots) for right-padded
        prompts at positions 0..T-1: the same result as `hidden_states` with a
        fresh `init_cache(B, length)`, but the prompt attends only to itself and
        the blocks run as the one layer scan of the cache-free forward."""
        b, t = tokens_bt.shape
        if length < t:
            raise ValueError(f"length={length} must be >= the prompt's {t} tokens")
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x, (k_lbtkd, v_lbtkd) = self._scan_layers(self._embed(tokens_bt), positions,
                                                  remat="none", keep_kv=True)
        s = cache_slots(length)
        pad = ((0, 0), (0, s - t), (0, 0), (0, 0))
        dt = self.config.compute_dtype
        ks = tuple(jnp.pad(k_lbtkd[layer], pad).astype(dt)
                   .reshape(b, s // KEY_BLOCK, KEY_BLOCK, *k_lbtkd.shape[3:])
                   .transpose(0, 3, 1, 4, 2) for layer in range(k_lbtkd.shape[0]))
        vs = tuple(jnp.pad(v_lbtkd[layer], pad).astype(dt).transpose(0, 2, 1, 3)
                   for layer in range(v_lbtkd.shape[0]))
        return self._final_norm(x), KVCache(ks, vs)

    # -- calls ----------------------------------------------------------------
    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array, *,
                 cache: KVCache | None = None,
                 layers: tuple[dict[str, jax.Array], ...] | None = None):
        """Logits [B, T, V] float32; with a cache, (logits, updated cache)."""
        if cache is None:
            return self.logits_from_hidden(self.hidden_states(tokens_bt, positions_bt))
        h, cache = self.hidden_states(tokens_bt, positions_bt, cache=cache, layers=layers)
        return self.logits_from_hidden(h), cache

    def values(self, tokens_bt: jax.Array, positions_bt: jax.Array) -> jax.Array:
        """Value-head outputs [B, T] float32 (one scalar per position)."""
        return self.value_from_hidden(self.hidden_states(tokens_bt, positions_bt))
