"""config.json <-> ModelConfig for the supported Hugging Face families.

`config_from_hf` reads what transformers would build (its per-family defaults
for keys a config.json may omit, legacy and transformers-5 RoPE keys, the
families' sliding-layer rules) and refuses what the decoder cannot compute
exactly; `config_to_hf` writes a config.json that transformers builds the same
network from, and refuses a ModelConfig that no family computes.

Everything wrong with a folder being loaded (config.json here, the weights and
tokenizer in hf.py) raises `HFLoadError`, which the CLI prints as one
`error:` line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxrl_lm.models.config import ROPE_TYPES, ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
                 "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3_text": "Gemma3ForCausalLM"}
GEMMAS = ("gemma", "gemma2", "gemma3_text")
LAYER_TYPES = ("full_attention", "sliding_attention")
# transformers' per-family defaults for keys a config.json may omit.
_DEFAULT_THETA = {"gemma3_text": 1e6, "qwen3": 1e6}
_REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")
_LLAMA3_KEYS = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
                "high_freq_factor": "rope_high_freq_factor",
                "original_max_position_embeddings": "rope_original_max_positions"}


class HFLoadError(ValueError):
    """An HF folder that cannot be loaded exactly: a missing or unreadable file, bad
    JSON, an unsupported config.json, a tensor missing, extra or of the wrong shape.
    The message names the file or tensor, and what was expected."""


# -- config.json <-> ModelConfig ------------------------------------------------
def _rope(rp: dict, theta: float, where: str) -> dict:
    """ModelConfig RoPE fields from one rope_parameters / rope_scaling dict."""
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise HFLoadError(f"config.json: {where} rope_type={rope_type!r} is not supported; "
                         f"supported: {', '.join(ROPE_TYPES)}")
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFLoadError("config.json: partial_rotary_factor must be 1.0")
    out = {"rope_theta": float(rp.get("rope_theta", theta)), "rope_type": rope_type}
    if rope_type == "llama3":
        for key, name in _LLAMA3_KEYS.items():
            if key not in rp:
                raise HFLoadError(f"config.json: {where} rope_type='llama3' needs {key!r}")
            out[name] = int(rp[key]) if name == "rope_original_max_positions" else float(rp[key])
    return out


def _rope_fields(hf: dict, model_type: str) -> dict:
    """RoPE fields from transformers-5 `rope_parameters` or the legacy keys
    (rope_theta, rope_scaling; Gemma 3: rope_local_base_freq)."""
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFLoadError("config.json: partial_rotary_factor must be 1.0")
    theta = float(hf.get("rope_theta", _DEFAULT_THETA.get(model_type, 10000.0)))
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if model_type != "gemma3_text":
        return _rope(rp, theta, "rope_parameters")
    # Gemma 3: one dict per layer type (transformers 5) or the legacy flat keys.
    per_type = rp if set(rp) & set(LAYER_TYPES) else {"full_attention": rp}
    full = _rope(per_type.get("full_attention") or {}, theta, "full_attention")
    local = _rope(per_type.get("sliding_attention") or {},
                  float(hf.get("rope_local_base_freq", 10000.0)), "sliding_attention")
    if full["rope_type"] != "default" or local["rope_type"] != "default":
        raise HFLoadError("config.json: gemma3_text supports only rope_type='default' "
                         f"(got {full['rope_type']!r} / {local['rope_type']!r})")
    return dict(full, rope_local_theta=local["rope_theta"])


def _sliding(hf: dict, model_type: str, num_layers: int) -> dict:
    """sliding_window and sliding_layers as transformers derives them per family."""
    window = hf.get("sliding_window")
    if model_type in ("llama", "gemma") or (model_type in ("qwen2", "qwen3")
                                           and not hf.get("use_sliding_window", False)):
        window = None  # these classes ignore sliding_window
    if window is None:
        return {}
    types = hf.get("layer_types")
    if model_type == "mistral" or types is None:
        if model_type == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                     for i in range(num_layers)]
        elif model_type == "gemma3_text":
            every = hf.get("sliding_window_pattern", 6)
            types = ["sliding_attention" if (i + 1) % every else "full_attention"
                     for i in range(num_layers)]
        elif model_type in ("qwen2", "qwen3"):
            first = hf.get("max_window_layers", 28)
            types = ["sliding_attention" if i >= first else "full_attention"
                     for i in range(num_layers)]
        else:  # mistral: every layer (it ignores layer_types)
            types = ["sliding_attention"] * num_layers
    if len(types) != num_layers or not set(types) <= set(LAYER_TYPES):
        raise HFLoadError(f"config.json: layer_types={types!r} must list {num_layers} of "
                         f"{', '.join(LAYER_TYPES)}")
    layers = tuple(t == "sliding_attention" for t in types)
    return dict(sliding_window=int(window), sliding_layers=layers) if any(layers) else {}


def _activation(hf: dict, model_type: str) -> str:
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    if model_type == "gemma" and act == "gelu":
        # transformers rewrites Gemma's legacy "gelu" to the tanh form it was trained with.
        act = "gelu_pytorch_tanh"
    allowed = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
    if act not in allowed:
        raise HFLoadError(f"config.json: hidden_act={act!r} is not supported; allowed: "
                         f"{', '.join(allowed)}")
    return allowed[act]


def _gemma_fields(hf: dict, model_type: str, head_dim: int) -> dict:
    """Gemma 2/3's query scale and soft-capping (transformers' defaults when absent)."""
    scalar = int(hf.get("query_pre_attn_scalar", 256))
    caps = {"gemma2": (50.0, 30.0), "gemma3_text": (None, None)}[model_type]
    attn_cap = hf.get("attn_logit_softcapping", caps[0])
    final_cap = hf.get("final_logit_softcapping", caps[1])
    return dict(post_norms=True, query_pre_attn_scalar=None if scalar == head_dim else scalar,
                attn_softcap=None if attn_cap is None else float(attn_cap),
                final_softcap=None if final_cap is None else float(final_cap))


def config_from_hf(hf: dict, *, dtype: str = "float32", param_dtype: str | None = None,
                   value_head: bool = False) -> ModelConfig:
    """The ModelConfig equivalent to an HF config.json dict; refuses anything inexact
    (HFLoadError naming the config.json field)."""
    if not isinstance(hf, dict):
        raise HFLoadError(f"config.json: expected a JSON object, got {type(hf).__name__}")
    try:
        return _config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, value_head=value_head)
    except HFLoadError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # a field of the wrong type or value
        raise HFLoadError(f"config.json: {e}") from None


def _config_from_hf(hf: dict, *, dtype: str, param_dtype: str | None,
                    value_head: bool) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFLoadError(f"config.json: model_type={model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for arch in hf.get("architectures") or ():
        if not arch.endswith("ForCausalLM"):
            raise HFLoadError(f"config.json: architectures lists {arch!r}; only causal LMs "
                             f"load (e.g. {ARCHITECTURES[model_type]})")
    for key in _REQUIRED_INTS:
        if key not in hf:
            raise HFLoadError(f"config.json: missing required field {key!r}")
        if isinstance(hf[key], bool) or not isinstance(hf[key], int) or hf[key] < 1:
            raise HFLoadError(f"config.json: {key}={hf[key]!r} must be a positive integer")
    if hf.get("mlp_bias", False):
        raise HFLoadError("config.json: mlp_bias=True is not supported")
    if hf.get("use_bidirectional_attention", False):
        raise HFLoadError("config.json: use_bidirectional_attention=True is not supported")
    bias = bool(hf.get("attention_bias", False)) and model_type != "mistral"
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    gemma = model_type in GEMMAS
    extra = _gemma_fields(hf, model_type, head_dim) if model_type in GEMMAS[1:] else {}
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim"), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        # qwen2 always has q/k/v biases and none on o_proj; elsewhere attention_bias
        # covers all four projections.
        attention_bias=True if model_type == "qwen2" else bias,
        attention_out_bias=False if model_type == "qwen2" else bias,
        activation=_activation(hf, model_type), norm_offset=1.0 if gemma else 0.0,
        scale_embeddings=gemma, qk_norm=model_type in ("qwen3", "gemma3_text"),
        **_rope_fields(hf, model_type), **_sliding(hf, model_type, hf["num_hidden_layers"]),
        **extra, dtype=dtype, param_dtype=param_dtype or dtype, value_head=value_head)


def _guess_model_type(cfg: ModelConfig) -> str:
    """The one HF family whose switches `cfg` sets (checked by `model_type_of`)."""
    if cfg.norm_offset == 1:
        return "gemma3_text" if cfg.qk_norm else "gemma2" if cfg.post_norms else "gemma"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.attention_bias and not cfg.attention_out_bias:
        return "qwen2"
    return "mistral" if cfg.sliding_window is not None else "llama"


def model_type_of(cfg: ModelConfig) -> str:
    """The HF family that computes exactly what `cfg` computes: its config.json,
    read back, must give `cfg` again; else a ValueError names the fields that differ."""
    model_type = _guess_model_type(cfg)
    back = config_from_hf(_hf_dict(cfg, model_type), dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, value_head=cfg.value_head)
    back = back.replace(remat=cfg.remat, master_dtype=cfg.master_dtype)  # training-only
    if back != cfg:
        diff = [f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(back, f.name)]
        raise ValueError(f"ModelConfig has no HF equivalent: as model_type={model_type!r} "
                         f"these switches would change: {', '.join(diff)}")
    return model_type


def _hf_dict(cfg: ModelConfig, model_type: str, max_position_embeddings: int = 2048) -> dict:
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "llama3":
        rope.update({key: getattr(cfg, name) for key, name in _LLAMA3_KEYS.items()})
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": int(max_position_embeddings),
        "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "hidden_act": "gelu_pytorch_tanh" if cfg.activation == "gelu_tanh" else "silu",
        "attention_dropout": 0.0, "dtype": cfg.param_dtype,
        "attention_bias": cfg.attention_bias, "sliding_window": cfg.sliding_window,
    }
    if model_type == "llama":
        hf.update(mlp_bias=False)
    if model_type in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=cfg.sliding_window is not None, max_window_layers=0)
    if model_type in GEMMAS[1:]:
        hf.update(hidden_activation=hf["hidden_act"],
                  query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
                  attn_logit_softcapping=cfg.attn_softcap,
                  final_logit_softcapping=cfg.final_softcap)
    if model_type == "gemma3_text":
        local = cfg.rope_theta if cfg.rope_local_theta is None else cfg.rope_local_theta
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": {
            "rope_type": "default", "rope_theta": local}}
    if cfg.sliding_layers is not None and model_type != "mistral":
        hf["layer_types"] = [LAYER_TYPES[s] for s in cfg.sliding_layers]
    elif model_type in ("qwen2", "qwen3", "gemma2", "gemma3_text"):
        hf["layer_types"] = [LAYER_TYPES[0]] * cfg.num_layers
    return hf


def config_to_hf(cfg: ModelConfig, *, max_position_embeddings: int = 2048,
                 token_ids: dict[str, int | None] | None = None) -> dict:
    """An HF config.json dict that transformers builds the same network from."""
    hf = _hf_dict(cfg, model_type_of(cfg), max_position_embeddings)
    hf.update({k: v for k, v in (token_ids or {}).items() if v is not None})
    return hf


# -- tensor names, shared by hf.py and sharded_load.py -------------------------------
# a value head saved by TRL's AutoModelForCausalLMWithValueHead
V_HEAD = ("v_head.summary.weight", "v_head.summary.bias")


def layer_names(cfg: ModelConfig) -> dict[str, str]:
    """Decoder stacked-parameter name -> HF per-layer suffix."""
    names = {"attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
             "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
             "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
             "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight",
             "down_proj": "mlp.down_proj.weight"}
    if cfg.attention_bias:
        names.update(q_bias="self_attn.q_proj.bias", k_bias="self_attn.k_proj.bias",
                     v_bias="self_attn.v_proj.bias")
    if cfg.attention_out_bias:
        names["o_bias"] = "self_attn.o_proj.bias"
    if cfg.qk_norm:
        names.update(q_norm="self_attn.q_norm.weight", k_norm="self_attn.k_norm.weight")
    if cfg.post_norms:  # Gemma 2/3 reuse post_attention_layernorm for the attention output
        names.update(attn_post_norm="post_attention_layernorm.weight",
                     mlp_norm="pre_feedforward_layernorm.weight",
                     mlp_post_norm="post_feedforward_layernorm.weight")
    return names
