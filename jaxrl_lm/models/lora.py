"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the decoder's projections.

A target projection W (stacked over layers, in the decoder's layout) gets two
trainable factors, and the adapted projection computes

    y = x W + s (x A) B,   s = alpha / r      A: [L, *in, r]  (random)   B: [L, r, *out]  (zero)

where `in`/`out` are W's input and output feature dims (q/k/v/gate/up: in = D;
o_proj: in = H, Hd; down_proj: in = F). B starts at zero, so an adapted model
computes exactly what its base computes until the first update.

`apply_lora(model, ...)` swaps the decoder's `LayerStack` for a `LoraLayerStack`
that holds the very same base `nnx.Param`s (no copy) plus `nnx.LoRAParam`
factors. Its `arrays()` (what the layer scan and the sampler read) returns the
base arrays unchanged and each target's factors beside them, `<name>_lora_a`
and `<name>_lora_b` (B already times s); `layers.linear` then applies a target
factored, x W + (x A) B, in the decoder's compute dtype (the float32 factors
are cast to it, as W is). No merged weight W + s A B is formed: a
training step's backward holds the gradients of A, B and of the [tokens, r]
products, never a weight-sized one, and the frozen W gets none. The decode
loop is factored too: two rank-r matmuls per target and token, the same
computation as the training forward's (a merged bfloat16 W + s A B would
round small updates away, and the sampler and the learner would disagree).
`merged_forward = True` on the stack restores the merged W' = W + s A B,
summed in float32 and rounded to `param_dtype` (the reference of the tests).
The factors are float32 whatever the base's dtype (like PEFT's adapters).
Before this forward, the merge ran once per forward: a
training step held a merged copy of every target and its gradient (about 2x
the targets' size), and a GRPO iteration's peak RSS at the Qwen2.5-0.5B shape
was 65% of a full fine-tune's (47% with remat full); factored, 48% (34%)
(float32 base; docs/benchmarks.md, the lora-memory bench).

Training: `trainable_filter(model)` is `nnx.LoRAParam` (plus a value head,
which is fresh and must learn); the train engine splits on it, so gradients,
optimizer state and checkpoints cover the adapters only, and the frozen base
stays in the module's other state, sharded by the same rules. The KL
reference of RL is the base itself: `without_adapters(model)` is a view of the
same arrays with the adapters switched off (no second copy of the weights).

Export: `merged_params(model)` gives the base with every delta merged in its
own dtype (`models.hf.save_hf` writes it), and `save_peft_adapter` writes a
PEFT folder (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained` applies to the HF base model. PEFT stores
lora_A.weight [r, in] and lora_B.weight [out, r] per layer and scales by
lora_alpha / r: lora_A = A[l].reshape(in, r).T, lora_B = B[l].reshape(r, out).T,
with `in`/`out` flattened in HF's order (heads-major for q/k/v/o).

No dropout: RL ratios need the training forward to equal the sampler's (a
dropped-out adapter input would move the ratio off 1 at the first step); the
factored forward would have an input x to drop out, but the config accepts
lora.dropout 0 only.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm.models.decoder import LayerStack

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# how many of a stacked weight's dims after the layer axis are input features
_IN_DIMS = {"o_proj": 2}
# our projection -> its HF module under model.layers.<i>
HF_MODULES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
              "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
              "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
              "down_proj": "mlp.down_proj"}
# trained under LoRA: the adapters, and a value head (fresh, so it must learn)
TRAINABLE = nnx.Any(nnx.LoRAParam, nnx.PathContains("value_head"))
ADAPTER_DTYPE = jnp.float32


def check_targets(targets) -> tuple[str, ...]:
    """The target names as a tuple; ValueError naming the allowed ones for an
    empty list, an unknown name or a repeat."""
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets or len(set(targets)) != len(targets):
        why = (f"{bad[0]!r} is not a projection" if bad else
               "is empty" if not targets else "names a projection twice")
        raise ValueError(f"lora.targets={list(targets)}: {why}; allowed: {', '.join(TARGETS)}")
    return targets


def target_features(mcfg, name: str) -> tuple[int, int]:
    """(in, out) features of one layer's projection `name` of a ModelConfig."""
    d, f, hd = mcfg.hidden_size, mcfg.intermediate_size, mcfg.head_dim
    q, kv = mcfg.num_heads * hd, mcfg.num_kv_heads * hd
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}[name]


def adapter_count(mcfg, rank: int, targets=TARGETS) -> int:
    """Parameters of the adapters: L x r x (in + out) per target."""
    return mcfg.num_layers * rank * sum(sum(target_features(mcfg, t))
                                        for t in check_targets(targets))


def _split_dims(name: str, shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    """(input dims, output dims) of one layer's weight of stacked `shape`."""
    k = 1 + _IN_DIMS.get(name, 1)
    return tuple(shape[1:k]), tuple(shape[k:])


def _merge(w: jax.Array, a: jax.Array, b: jax.Array, scale: float, dtype) -> jax.Array:
    """W + scale * A @ B, summed in float32, as `dtype`."""
    n_layers, rank = a.shape[0], a.shape[-1]
    delta = jnp.matmul(a.reshape(n_layers, -1, rank).astype(jnp.float32),
                       b.reshape(n_layers, rank, -1).astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    return (w.astype(jnp.float32) + scale * delta.reshape(w.shape)).astype(dtype)


class LoraLayerStack(LayerStack):
    """The decoder's LayerStack with LoRA factors on `targets`; see the module doc.

    Holds the base stack's own Param objects (shared, not copied), and for each
    target `<name>_lora_a` [L, *in, r] and `<name>_lora_b` [L, r, *out]
    (nnx.LoRAParam, logical axes those of the base weight's dims, the rank
    axis unsharded)."""

    def __init__(self, base: LayerStack, *, rank: int, alpha: float, targets: tuple[str, ...],
                 key: jax.Array):
        # no LayerStack.__init__: it would draw a second random base
        for name, var in vars(base).items():
            if isinstance(var, nnx.Param):
                setattr(self, name, var)
        self.lora_rank, self.lora_alpha, self.lora_targets = rank, float(alpha), targets
        self.adapters_on = True
        self.merged_forward = False  # True: arrays() merges W + s A B (the old forward)
        for name, k in zip(targets, jax.random.split(key, len(targets))):
            w = getattr(self, name)
            names = tuple(w.get_metadata().get("out_sharding") or (None,) * w.ndim)
            ins, outs = _split_dims(name, w.shape)
            n_in = 1 + len(ins)
            bound = 1.0 / math.sqrt(math.prod(ins))  # PEFT's kaiming-uniform(a=sqrt(5)) bound
            a = jax.random.uniform(k, (w.shape[0], *ins, rank), ADAPTER_DTYPE, -bound, bound)
            b = jnp.zeros((w.shape[0], rank, *outs), ADAPTER_DTYPE)
            setattr(self, f"{name}_lora_a", nnx.LoRAParam(
                a, out_sharding=(*names[:n_in], None), eager_sharding=False))
            setattr(self, f"{name}_lora_b", nnx.LoRAParam(
                b, out_sharding=(names[0], None, *names[n_in:]), eager_sharding=False))

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def arrays(self, dtype=None) -> dict[str, jax.Array]:
        """The base stack's arrays (as `dtype` if given) and, unless the adapters
        are off, each target's factors: `<name>_lora_a` [L, *in, r] and
        `<name>_lora_b` [L, r, *out] scaled by alpha / r, both float32, which
        `layers.linear` applies as x W + (x A) B. With `merged_forward` set
        (a reference for tests and the bench) each target is W + s A B instead."""
        out = {k: v[...] if dtype is None else v[...].astype(dtype)
               for k, v in vars(self).items()
               if isinstance(v, nnx.Param) and not isinstance(v, nnx.LoRAParam)}
        if not self.adapters_on:
            return out
        for name in self.lora_targets:
            a, b = getattr(self, f"{name}_lora_a")[...], getattr(self, f"{name}_lora_b")[...]
            if self.merged_forward:
                out[name] = _merge(out[name], a, b, self.scale, out[name].dtype)
            else:
                out[f"{name}_lora_a"] = a
                out[f"{name}_lora_b"] = b * jnp.asarray(self.scale, b.dtype)
        return out


def has_adapters(model: nnx.Module) -> bool:
    return isinstance(getattr(model, "layers", None), LoraLayerStack)


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, targets=TARGETS, seed: int = 0,
               base_path: str | None = None) -> nnx.Module:
    """Add adapters to a Decoder in place (and return it). ValueError naming the
    config field for a rank < 1 or above min(in, out) of a target, an alpha that
    is not a finite number > 0, bad targets, or a model that has adapters."""
    targets = check_targets(targets)
    if has_adapters(model):
        raise ValueError("lora: this model already has adapters")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora.rank={rank!r}: must be an int >= 1 (0 turns LoRA off)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or \
            not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora.alpha={alpha!r}: must be a finite number > 0")
    layers = model.layers
    for name in targets:
        ins, outs = _split_dims(name, getattr(layers, name).shape)
        n_in, n_out = math.prod(ins), math.prod(outs)
        if rank > min(n_in, n_out):
            raise ValueError(f"lora.rank={rank}: must be <= min(in, out) = {min(n_in, n_out)} "
                             f"for {name} ({n_in} -> {n_out} features)")
    model.layers = LoraLayerStack(layers, rank=rank, alpha=alpha, targets=targets,
                                  key=jax.random.fold_in(jax.random.PRNGKey(seed), 0x10A))
    model.lora_base_path = base_path  # the HF folder the adapters apply to (adapter_config)
    return model


def trainable_filter(model: nnx.Module):
    """What the train engine optimizes: the adapters (and a value head) under
    LoRA, every nnx.Param otherwise."""
    return TRAINABLE if has_adapters(model) else nnx.Param


def without_adapters(model: nnx.Module) -> nnx.Module:
    """The base model: a module over the same arrays (no copy) with the adapters
    off. The model itself when it has none."""
    if not has_adapters(model):
        return model
    base = nnx.merge(*nnx.split(model))
    base.layers.adapters_on = False
    return base


def merged_params(model: nnx.Module) -> dict:
    """The pure parameter dict of the base (nnx.Param, adapters left out) with
    each target's delta merged, in the base weight's dtype: what an HF folder of
    the adapted model holds."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    if not has_adapters(model):
        return pure
    stack = model.layers
    for name in stack.lora_targets:
        w = pure["layers"][name]
        pure["layers"][name] = _merge(w, getattr(stack, f"{name}_lora_a")[...],
                                      getattr(stack, f"{name}_lora_b")[...], stack.scale, w.dtype)
    return pure


def peft_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """PEFT's adapter_model.safetensors content: HF name -> float32 array."""
    stack = model.layers
    out = {}
    for name in stack.lora_targets:
        a = np.asarray(jax.device_get(getattr(stack, f"{name}_lora_a")[...]), np.float32)
        b = np.asarray(jax.device_get(getattr(stack, f"{name}_lora_b")[...]), np.float32)
        n_layers, r = a.shape[0], stack.lora_rank
        for i in range(n_layers):
            prefix = f"base_model.model.model.layers.{i}.{HF_MODULES[name]}"
            out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, r).T)
            out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(r, -1).T)
    return out


def adapter_config(model: nnx.Module) -> dict[str, Any]:
    """PEFT's adapter_config.json for the model's adapters."""
    stack = model.layers
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": getattr(model, "lora_base_path", None),
            "r": stack.lora_rank, "lora_alpha": stack.lora_alpha, "lora_dropout": 0.0,
            "target_modules": list(stack.lora_targets), "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
            "inference_mode": True, "modules_to_save": None}


def save_peft_adapter(model: nnx.Module, path) -> pathlib.Path:
    """Write the adapters as a PEFT LoRA folder: adapter_config.json and
    adapter_model.safetensors (float32), for `PeftModel.from_pretrained(base, path)`."""
    from safetensors.numpy import save_file

    if not has_adapters(model):
        raise ValueError("save_peft_adapter: the model has no LoRA adapters")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(model), str(path / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(adapter_config(model), indent=2) + "\n")
    return path
