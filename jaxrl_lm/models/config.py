"""ModelConfig: one frozen dataclass that selects the Llama, Qwen2 or Gemma flavour.

The three families share one decoder (see `decoder.py`); they differ only in
these switches:

    family   attention_bias  activation   norm_offset  scale_embeddings  tie
    llama    False           "silu"       0            False             usually False
    qwen2    True (q/k/v)    "silu"       0            False             small models True
    gemma    False           "gelu_tanh"  1            True              True

Gemma-2 extras (logit soft-capping, sliding windows, post-norms) are not
supported; the HF loader refuses such folders.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

ACTIVATIONS = ("silu", "gelu_tanh")
DTYPES = ("float32", "bfloat16")


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
                     "scale_embeddings", "value_head"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be a bool")
        if not self.init_std > 0:
            fail("init_std", "must be > 0")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def storage_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
