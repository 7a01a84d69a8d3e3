"""ModelConfig: one frozen dataclass that selects the decoder's family by switches.

All families share one decoder (see `decoder.py`); they differ only in these
switches (every one is static: a switch that is off costs nothing):

    family       bias        act         offset  embed*sqrt(D)  qk_norm  post_norms  sliding
    llama        optional    silu        0       no             no       no          no
    qwen2        q/k/v       silu        0       no             no       no          optional
    qwen3        optional    silu        0       no             yes      no          optional
    mistral      no          silu        0       no             no       no          all layers
    gemma        optional    gelu_tanh   1       yes            no       no          no
    gemma2       optional    gelu_tanh   1       yes            no       yes         alternating
    gemma3_text  optional    gelu_tanh   1       yes            yes      yes         5 of 6 layers

Llama 3.1+ adds rope_type="llama3"; Gemma 2 adds logit soft-capping and a query
scale from query_pre_attn_scalar; Gemma 3 a separate RoPE base for its sliding
layers (rope_local_theta).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

ACTIVATIONS = ("silu", "gelu_tanh")
DTYPES = ("float32", "bfloat16")
REMAT_MODES = ("none", "full", "dots")  # see ModelConfig.remat
MASTER_DTYPES = ("float32",)  # see ModelConfig.master_dtype
ROPE_TYPES = ("default", "llama3")
# llama3 RoPE parameters and their values when unused (rope_type="default").
LLAMA3_ROPE = {"rope_factor": 8.0, "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0,
               "rope_original_max_positions": 8192}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V: rows of the embedding table
    hidden_size: int  # D: residual stream width
    intermediate_size: int  # F: gated MLP width
    num_layers: int  # L: decoder blocks (stored stacked on a leading "layers" axis)
    num_heads: int  # H: query heads
    num_kv_heads: int  # K: key/value heads; H % K == 0 (grouped-query attention)
    head_dim: int | None = None  # Hd: features per head; None means D // H
    rope_theta: float = 10000.0  # RoPE base frequency
    rms_norm_eps: float = 1e-6  # epsilon inside RMSNorm's square root
    tie_embeddings: bool = True  # unembedding = embedding table transposed
    attention_bias: bool = False  # bias on the q/k/v projections (Qwen2)
    attention_out_bias: bool = False  # bias on the output projection (Llama attention_bias=True)
    activation: str = "silu"  # gate activation: "silu" (SwiGLU) | "gelu_tanh" (GeGLU)
    norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + w): 0 Llama/Qwen2, 1 Gemma
    scale_embeddings: bool = False  # multiply embeddings by sqrt(D) (Gemma)
    dtype: str = "float32"  # compute dtype of activations: "float32" | "bfloat16"
    param_dtype: str = "float32"  # storage dtype of parameters: "float32" | "bfloat16"
    value_head: bool = False  # add a scalar value head on the final hidden state (PPO)
    init_std: float = 0.02  # std of the normal initialiser for fresh weights
    rope_type: str = "default"  # "default" | "llama3" (Llama 3.1+: per-wavelength scaling)
    rope_factor: float = 8.0  # llama3: frequencies of long wavelengths are divided by this
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths > original/this are fully scaled
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths < original/this are unscaled
    rope_original_max_positions: int = 8192  # llama3: the context length of pretraining
    rope_local_theta: float | None = None  # RoPE base of sliding layers (Gemma 3); None: rope_theta
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # RMSNorm on attention / MLP outputs before the add (Gemma 2/3)
    query_pre_attn_scalar: int | None = None  # q.k scaled by this**-0.5, not Hd**-0.5 (Gemma 2/3)
    attn_softcap: float | None = None  # c: scores -> c * tanh(scores / c), pre-mask (Gemma 2)
    final_softcap: float | None = None  # c: logits -> c * tanh(logits / c) (Gemma 2)
    sliding_window: int | None = None  # W: sliding layers see the last W positions (Mistral, Gemma 2)
    sliding_layers: tuple[bool, ...] | None = None  # per layer: slides? None: all (if sliding_window)
    remat: str = "none"  # recompute blocks in the backward: "none" | "full" | "dots" (keep matmuls)
    master_dtype: str | None = None  # "float32": train a float32 master of bfloat16 params

    def __post_init__(self):
        def fail(name: str, msg: str):
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            fail("num_kv_heads", f"must divide num_heads={self.num_heads}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                fail("hidden_size", f"must be divisible by num_heads={self.num_heads} "
                     "when head_dim is None")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            fail("head_dim", "must be an even integer >= 2 (RoPE rotates feature pairs)")
        if not self.rope_theta > 0:
            fail("rope_theta", "must be > 0")
        if not self.rms_norm_eps > 0:
            fail("rms_norm_eps", "must be > 0")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"must be one of {', '.join(ACTIVATIONS)}")
        if self.norm_offset not in (0, 1):
            fail("norm_offset", "must be 0 (Llama/Qwen2) or 1 (Gemma)")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                fail(name, f"must be one of {', '.join(DTYPES)}")
        for name in ("tie_embeddings", "attention_bias", "attention_out_bias",
                     "scale_embeddings", "value_head", "qk_norm", "post_norms"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        if not self.init_std > 0:
            fail("init_std", "must be > 0")
        self._check_rope(fail)
        q = self.query_pre_attn_scalar
        if q is not None and (not isinstance(q, int) or isinstance(q, bool) or q < 1):
            fail("query_pre_attn_scalar", "must be None or a positive integer")
        for name in ("attn_softcap", "final_softcap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                fail(name, "must be None or a number > 0")
        self._check_sliding(fail)
        if self.remat not in REMAT_MODES:
            fail("remat", f"must be one of {', '.join(REMAT_MODES)}")
        if self.master_dtype is not None:
            if self.master_dtype not in MASTER_DTYPES:
                fail("master_dtype", f"must be None or one of {', '.join(MASTER_DTYPES)}")
            if self.param_dtype == self.master_dtype:
                fail("master_dtype", "needs param_dtype='bfloat16' (float32 params are their "
                     "own master copy)")

    def _check_rope(self, fail) -> None:
        if self.rope_type not in ROPE_TYPES:
            fail("rope_type", f"is not supported; supported: {', '.join(ROPE_TYPES)}")
        if self.rope_type == "default":
            for name, unused in LLAMA3_ROPE.items():
                if getattr(self, name) != unused:
                    fail(name, f"is only used with rope_type='llama3' (leave it at {unused})")
        else:
            if not self.rope_factor >= 1:
                fail("rope_factor", "must be >= 1")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                fail("rope_high_freq_factor", "must be > rope_low_freq_factor > 0")
            if not isinstance(self.rope_original_max_positions, int) or \
                    self.rope_original_max_positions < 1:
                fail("rope_original_max_positions", "must be a positive integer")
        if self.rope_local_theta is not None:
            if not self.rope_local_theta > 0:
                fail("rope_local_theta", "must be None or > 0")
            if self.sliding_window is None:
                fail("rope_local_theta", "applies to sliding layers; set sliding_window")
            if self.rope_type != "default":
                fail("rope_local_theta", "is only supported with rope_type='default'")

    def _check_sliding(self, fail) -> None:
        w, layers = self.sliding_window, self.sliding_layers
        if w is None:
            if layers is not None:
                fail("sliding_layers", "needs sliding_window")
            return
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            fail("sliding_window", "must be None or a positive integer")
        if layers is None:
            object.__setattr__(self, "sliding_layers", (True,) * self.num_layers)
            return
        layers = tuple(layers)
        if len(layers) != self.num_layers or not all(isinstance(x, bool) for x in layers):
            fail("sliding_layers", f"must be None or {self.num_layers} bools (one per layer)")
        if not any(layers):
            fail("sliding_layers", "no layer slides; use sliding_window=None")
        object.__setattr__(self, "sliding_layers", layers)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer` (None: it attends all earlier positions)."""
        return self.sliding_window if self.sliding_layers and self.sliding_layers[layer] else None

    def layer_local_rope(self, layer: int) -> bool:
        """Whether `layer` uses rope_local_theta (a sliding layer of Gemma 3)."""
        return self.rope_local_theta is not None and self.layer_window(layer) is not None

    @property
    def mixed_layers(self) -> bool:
        """Whether some layers slide and others do not (Gemma 2/3's pattern)."""
        return self.sliding_layers is not None and not all(self.sliding_layers)

    @property
    def attn_scale(self) -> float:
        """The factor on q.k: query_pre_attn_scalar**-0.5 (Gemma 2/3) or head_dim**-0.5."""
        return (self.head_dim if self.query_pre_attn_scalar is None
                else self.query_pre_attn_scalar) ** -0.5

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
