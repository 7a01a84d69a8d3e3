"""Load and save Hugging Face folders (config.json + safetensors + tokenizer).

Supported `model_type`s: llama, qwen2, gemma. Everything the decoder cannot
reproduce exactly (RoPE scaling, sliding windows, MLP biases, Gemma-2's
soft-capping and extra norms) is refused with a ValueError naming the config
field, rather than loaded approximately.

Weight names (HF, per layer i) -> decoder parameters (see decoder.py):

    model.embed_tokens.weight                 [V, D]      -> embed
    model.layers.i.input_layernorm.weight     [D]         -> layers.attn_norm[i]
    model.layers.i.self_attn.q_proj.weight    [H*Hd, D]   -> layers.q_proj[i]  = W.T.reshape(D, H, Hd)
    model.layers.i.self_attn.{k,v}_proj.weight [K*Hd, D]  -> layers.{k,v}_proj[i]
    model.layers.i.self_attn.{q,k,v}_proj.bias            -> layers.{q,k,v}_bias[i]  (qwen2; llama bias)
    model.layers.i.self_attn.o_proj.weight    [D, H*Hd]   -> layers.o_proj[i]  = W.T.reshape(H, Hd, D)
    model.layers.i.self_attn.o_proj.bias      [D]         -> layers.o_bias[i]        (llama bias)
    model.layers.i.post_attention_layernorm.weight        -> layers.mlp_norm[i]
    model.layers.i.mlp.{gate,up}_proj.weight  [F, D]      -> layers.{gate,up}_proj[i] = W.T
    model.layers.i.mlp.down_proj.weight       [D, F]      -> layers.down_proj[i]     = W.T
    model.norm.weight                         [D]         -> final_norm
    lm_head.weight                            [V, D]      -> lm_head = W.T           (untied only)
    v_head.summary.weight [1, D], .bias [1]               -> value_head.kernel, .bias (TRL's names)

Gemma's norm weights are stored as w - 1 and used as 1 + w by both sides, so
they are copied unchanged (norm_offset=1 in the config).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.tokenizer import quiet_transformers

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "gemma")
# Buffers some exporters write next to the weights; they are recomputed, not loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_V_HEAD = ("v_head.summary.weight", "v_head.summary.bias")


# -- config.json <-> ModelConfig ------------------------------------------------
def _rope_theta(hf: dict) -> float:
    """RoPE base from either transformers-5 `rope_parameters` or legacy keys."""
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json: rope_type={rope_type!r} is not supported; only "
                         "'default' (unscaled) RoPE loads exactly")
    if hf.get("partial_rotary_factor", rp.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("config.json: partial_rotary_factor must be 1.0")
    return float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _activation(hf: dict, model_type: str) -> str:
    act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
    if model_type == "gemma" and act == "gelu":
        # transformers rewrites Gemma's legacy "gelu" to the tanh form it was trained with.
        act = "gelu_pytorch_tanh"
    allowed = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
    if act not in allowed:
        raise ValueError(f"config.json: hidden_act={act!r} is not supported; allowed: "
                         f"{', '.join(allowed)}")
    return allowed[act]


def config_from_hf(hf: dict, *, dtype: str = "float32", param_dtype: str | None = None,
                   value_head: bool = False) -> ModelConfig:
    """The ModelConfig equivalent to an HF config.json dict; refuses anything inexact."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config.json: model_type={model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in hf:
            raise ValueError(f"config.json: missing required field {key!r}")
    if hf.get("mlp_bias", False):
        raise ValueError("config.json: mlp_bias=True is not supported")
    if hf.get("use_sliding_window", False) or "sliding_attention" in (hf.get("layer_types") or ()):
        raise ValueError("config.json: sliding-window attention is not supported "
                         "(use_sliding_window / layer_types)")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"), rope_theta=_rope_theta(hf),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", model_type == "gemma")),
        # qwen2 always has q/k/v biases; llama's attention_bias covers o_proj too.
        attention_bias=True if model_type == "qwen2" else bias,
        attention_out_bias=bias if model_type == "llama" else False,
        activation=_activation(hf, model_type),
        norm_offset=1.0 if model_type == "gemma" else 0.0,
        scale_embeddings=model_type == "gemma",
        dtype=dtype, param_dtype=param_dtype or dtype, value_head=value_head)


def model_type_of(cfg: ModelConfig) -> str:
    """The HF family that computes exactly what `cfg` computes."""
    gemma = (cfg.norm_offset == 1, cfg.scale_embeddings, cfg.activation == "gelu_tanh")
    if all(gemma) and not cfg.attention_bias and not cfg.attention_out_bias:
        return "gemma"
    if any(gemma):
        raise ValueError("ModelConfig mixes Gemma switches (norm_offset=1, scale_embeddings, "
                         "gelu_tanh) with others; no HF model_type computes that")
    if cfg.attention_bias and not cfg.attention_out_bias:
        return "qwen2"
    if cfg.attention_out_bias and not cfg.attention_bias:
        raise ValueError("ModelConfig.attention_out_bias without attention_bias has no HF "
                         "equivalent")
    return "llama"


def config_to_hf(cfg: ModelConfig, *, max_position_embeddings: int = 2048,
                 token_ids: dict[str, int | None] | None = None) -> dict:
    """An HF config.json dict that transformers builds the same network from."""
    model_type = model_type_of(cfg)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "gemma": "GemmaForCausalLM"}[model_type]
    hf: dict[str, Any] = {
        "architectures": [arch], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": int(max_position_embeddings),
        "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "gelu_pytorch_tanh" if model_type == "gemma" else "silu",
        "attention_dropout": 0.0, "dtype": cfg.param_dtype,
    }
    if model_type == "llama":
        hf.update(attention_bias=cfg.attention_bias, mlp_bias=False)
    elif model_type == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None)
    else:
        hf.update(attention_bias=False)
    hf.update({k: v for k, v in (token_ids or {}).items() if v is not None})
    return hf


def _token_ids(tokenizer: Any) -> dict[str, int | None]:
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None)
            for name in ("bos", "eos", "pad")}


def write_config(cfg: ModelConfig, path, *, tokenizer: Any = None,
                 max_position_embeddings: int = 2048) -> pathlib.Path:
    """Write `config.json` for `cfg` (token ids taken from `tokenizer` if given)."""
    hf = config_to_hf(cfg, max_position_embeddings=max_position_embeddings,
                      token_ids=_token_ids(tokenizer) if tokenizer is not None else None)
    out = pathlib.Path(path) / "config.json"
    out.write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return out


# -- folder reading -------------------------------------------------------------
def _folder(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ValueError(f"path={str(path)!r} is not a directory (expected an HF model folder "
                         "with config.json, *.safetensors and tokenizer files)")
    if not (path / "config.json").is_file():
        raise ValueError(f"path={str(path)!r} has no config.json")
    return path


def read_hf_config(path) -> dict:
    """The raw config.json dict of an HF folder."""
    return json.loads((_folder(path) / "config.json").read_text())


def load_config(path, *, dtype: str = "float32", param_dtype: str | None = None,
                value_head: bool = False) -> ModelConfig:
    """ModelConfig of an HF folder (config.json only)."""
    return config_from_hf(read_hf_config(path), dtype=dtype, param_dtype=param_dtype,
                          value_head=value_head)


def load_tokenizer(path):
    """The folder's tokenizer through transformers' AutoTokenizer, local files only."""
    quiet_transformers()
    from transformers import AutoTokenizer

    path = _folder(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model",
                                              "vocab.json", "tokenizer_config.json")):
        raise ValueError(f"path={str(path)!r} has no tokenizer files (tokenizer.json, "
                         "tokenizer_config.json, ...)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a folder: model.safetensors, or the shards its index lists."""
    from safetensors import safe_open

    path = _folder(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"path={str(path)!r} has no *.safetensors weights (nor "
                         "model.safetensors.index.json); .bin/.pth checkpoints are not read")
    tensors = {}
    for name in files:
        if not (path / name).is_file():
            raise ValueError(f"{index.name} lists {name!r}, which is missing from {str(path)!r}")
        with safe_open(str(path / name), framework="numpy") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


# -- weights --------------------------------------------------------------------
def _layer_names(cfg: ModelConfig) -> dict[str, str]:
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
    return names


def _to_ours(name: str, w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """One layer's HF tensor -> our per-layer layout (see the module docstring)."""
    D, H, K, Hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads = {"q": H, "k": K, "v": K}
    if name in ("q_proj", "k_proj", "v_proj"):
        return w.T.reshape(D, heads[name[0]], Hd)
    if name in ("q_bias", "k_bias", "v_bias"):
        return w.reshape(heads[name[0]], Hd)
    if name == "o_proj":
        return w.T.reshape(H, Hd, D)
    return w.T if name.endswith("_proj") else w


def _to_hf(name: str, w: np.ndarray) -> np.ndarray:
    """Inverse of `_to_ours` for one layer's slice."""
    if name in ("q_proj", "k_proj", "v_proj"):
        return w.reshape(w.shape[0], -1).T
    if name in ("q_bias", "k_bias", "v_bias"):
        return w.reshape(-1)
    if name == "o_proj":
        return w.reshape(-1, w.shape[-1]).T
    return w.T if name.endswith("_proj") else w


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig,
                   expected: dict) -> dict:
    """HF tensors -> the decoder's pure parameter dict, shape-checked against `expected`
    (a pure dict of ShapeDtypeStructs, e.g. from an abstract Decoder)."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}

    def take(key: str) -> np.ndarray:
        if key not in tensors:
            raise ValueError(f"safetensors: missing tensor {key!r} required by the config")
        return tensors.pop(key)

    out: dict[str, Any] = {"embed": take("model.embed_tokens.weight"),
                           "final_norm": take("model.norm.weight")}
    out["layers"] = {
        ours: np.stack([_to_ours(ours, take(f"model.layers.{i}.{hf}"), cfg)
                        for i in range(cfg.num_layers)])
        for ours, hf in _layer_names(cfg).items()}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some exporters also write the tied copy
    else:
        out["lm_head"] = take("lm_head.weight").T
    if cfg.value_head:
        if _V_HEAD[0] in tensors:
            out["value_head"] = {"kernel": take(_V_HEAD[0]).reshape(-1),
                                 "bias": take(_V_HEAD[1]).reshape(())}
        else:  # a fresh value head: zeros, so initial values are 0 and no key is needed
            dt = expected["value_head"]["kernel"].dtype
            out["value_head"] = {"kernel": np.zeros((cfg.hidden_size,), dt),
                                 "bias": np.zeros((), dt)}
    if tensors:
        extra = sorted(tensors)
        raise ValueError(f"safetensors: {len(extra)} tensors the {model_type_of(cfg)} config "
                         f"does not use, e.g. {extra[:3]}; the checkpoint and config.json "
                         "disagree or the architecture is not supported")
    flat_out, flat_exp = nnx.traversals.flatten_mapping(out), nnx.traversals.flatten_mapping(expected)
    for key, want in flat_exp.items():
        got = flat_out[key].shape
        if tuple(got) != tuple(want.shape):
            raise ValueError(f"safetensors: parameter {'.'.join(key)} has shape {got} after "
                             f"conversion; the config implies {tuple(want.shape)}")
    return out


def params_to_hf(pure: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The decoder's pure parameter dict -> HF tensor names and layouts."""
    arr = lambda x: np.ascontiguousarray(np.asarray(x))  # noqa: E731
    out = {"model.embed_tokens.weight": arr(pure["embed"]),
           "model.norm.weight": arr(pure["final_norm"])}
    for ours, hf in _layer_names(cfg).items():
        stacked = np.asarray(pure["layers"][ours])
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{hf}"] = arr(_to_hf(ours, stacked[i]))
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = arr(np.asarray(pure["lm_head"]).T)
    if cfg.value_head:
        out[_V_HEAD[0]] = arr(np.asarray(pure["value_head"]["kernel"]).reshape(1, -1))
        out[_V_HEAD[1]] = arr(np.asarray(pure["value_head"]["bias"]).reshape(1))
    return out


# -- public entry points ----------------------------------------------------------
def build_model(cfg: ModelConfig, pure: dict):
    """A Decoder holding `pure` (host arrays), without running the random initialiser."""
    from jaxrl_lm.models.decoder import Decoder

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    flat_exp = nnx.traversals.flatten_mapping(nnx.to_pure_dict(state))
    flat = nnx.traversals.flatten_mapping(pure)
    values = {k: jax.numpy.asarray(flat[k], dtype=v.dtype) for k, v in flat_exp.items()}
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(values))
    return nnx.merge(graphdef, state)


def load_hf(path, *, dtype: str = "float32", param_dtype: str | None = None,
            value_head: bool | None = None):
    """(Decoder, tokenizer) from an HF folder: config.json, model.safetensors or a
    sharded model.safetensors.index.json, and tokenizer files (no network).

    dtype is the compute dtype, param_dtype the storage dtype (default: dtype).
    value_head: None adds one iff the folder has v_head.* tensors; True always
    (zeros when absent); False never (v_head.* tensors then raise as unexpected).
    """
    from jaxrl_lm.models.decoder import Decoder

    path = _folder(path)
    hf = read_hf_config(path)
    tensors = read_safetensors(path)
    if value_head is None:
        value_head = _V_HEAD[0] in tensors
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, value_head=value_head)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
        lambda: Decoder(cfg, rngs=nnx.Rngs(0)))))
    pure = params_from_hf(tensors, cfg, abstract)
    return build_model(cfg, pure), load_tokenizer(path)


def save_hf(model, tokenizer, path, *, max_position_embeddings: int = 2048) -> pathlib.Path:
    """Write `model` and `tokenizer` as an HF folder that transformers loads:
    config.json, model.safetensors (float weights as stored) and tokenizer files."""
    from safetensors.numpy import save_file

    cfg = model.config
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    write_config(cfg, path, tokenizer=tokenizer, max_position_embeddings=max_position_embeddings)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
        _check_tokenizer_reloads(tokenizer, path, model_type_of(cfg))
    return path


_PROBE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n a  b\n\nc "


def _check_tokenizer_reloads(tokenizer: Any, path: pathlib.Path, model_type: str) -> None:
    """transformers picks the tokenizer class from model_type for some families
    (qwen2 -> the byte-level Qwen2Tokenizer), rebuilding the pipeline from the
    vocabulary; refuse a folder whose tokenizer would come back different."""
    again = load_tokenizer(path)
    want = tokenizer.encode(_PROBE, add_special_tokens=False)
    got = again.encode(_PROBE, add_special_tokens=False)
    if got != want or again.decode(got) != tokenizer.decode(want):
        raise ValueError(
            f"save_hf: transformers loads the tokenizer written to {str(path)!r} as "
            f"{type(again).__name__}, which encodes text differently from the given "
            f"{type(tokenizer).__name__}; for model_type={model_type!r} "
            "transformers forces its own tokenizer class; use a Llama-style config for "
            "this tokenizer")
