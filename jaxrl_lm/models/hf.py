"""Load and save Hugging Face folders (config.json + safetensors + tokenizer).

Supported `model_type`s: llama (incl. Llama 3.1+ "llama3" RoPE), qwen2, qwen3,
mistral, gemma, gemma2, gemma3_text (see config.py for what each switches on).
Everything the decoder cannot reproduce exactly (other RoPE types, MLP biases,
partial rotary, bidirectional attention, other architectures) is refused with a
ValueError naming the config field, rather than loaded approximately.

Weight names (HF, per layer i) -> decoder parameters (see decoder.py):

    model.embed_tokens.weight                 [V, D]      -> embed
    model.layers.i.input_layernorm.weight     [D]         -> layers.attn_norm[i]
    model.layers.i.self_attn.q_proj.weight    [H*Hd, D]   -> layers.q_proj[i]  = W.T.reshape(D, H, Hd)
    model.layers.i.self_attn.{k,v}_proj.weight [K*Hd, D]  -> layers.{k,v}_proj[i]
    model.layers.i.self_attn.{q,k,v}_proj.bias            -> layers.{q,k,v}_bias[i]  (qwen2; attention_bias)
    model.layers.i.self_attn.o_proj.weight    [D, H*Hd]   -> layers.o_proj[i]  = W.T.reshape(H, Hd, D)
    model.layers.i.self_attn.o_proj.bias      [D]         -> layers.o_bias[i]        (attention_bias, not qwen2)
    model.layers.i.self_attn.{q,k}_norm.weight [Hd]       -> layers.{q,k}_norm[i]    (qwen3, gemma3)
    model.layers.i.post_attention_layernorm.weight        -> layers.mlp_norm[i]
      gemma2/3 instead (four norms per block):
        post_attention_layernorm  -> layers.attn_post_norm[i]
        pre_feedforward_layernorm -> layers.mlp_norm[i]
        post_feedforward_layernorm -> layers.mlp_post_norm[i]
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
from jaxrl_lm.models.hf_config import (SUPPORTED_MODEL_TYPES, config_from_hf,  # noqa: F401
                                       config_to_hf, model_type_of)
from jaxrl_lm.models.tokenizer import quiet_transformers

# Buffers some exporters write next to the weights; they are recomputed, not loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_V_HEAD = ("v_head.summary.weight", "v_head.summary.bias")


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
    if cfg.qk_norm:
        names.update(q_norm="self_attn.q_norm.weight", k_norm="self_attn.k_norm.weight")
    if cfg.post_norms:  # Gemma 2/3 reuse post_attention_layernorm for the attention output
        names.update(attn_post_norm="post_attention_layernorm.weight",
                     mlp_norm="pre_feedforward_layernorm.weight",
                     mlp_post_norm="post_feedforward_layernorm.weight")
    return names


def _hf_shape(name: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of one layer's tensor whose decoder shape (per layer) is `ours`."""
    if name in ("q_proj", "k_proj", "v_proj"):
        return (ours[1] * ours[2], ours[0])
    if name in ("q_bias", "k_bias", "v_bias"):
        return (ours[0] * ours[1],)
    if name == "o_proj":
        return (ours[2], ours[0] * ours[1])
    return ours[::-1] if name.endswith("_proj") else ours


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

    def take(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in tensors:
            raise ValueError(f"safetensors: missing tensor {key!r} required by the config")
        w = tensors.pop(key)
        if shape is not None and tuple(w.shape) != tuple(shape):
            raise ValueError(f"safetensors: tensor {key!r} has shape {tuple(w.shape)}; "
                             f"config.json implies {tuple(shape)}")
        return w

    out: dict[str, Any] = {"embed": take("model.embed_tokens.weight", expected["embed"].shape),
                           "final_norm": take("model.norm.weight", expected["final_norm"].shape)}
    out["layers"] = {
        ours: np.stack([_to_ours(ours, take(f"model.layers.{i}.{hf}", _hf_shape(
            ours, expected["layers"][ours].shape[1:])), cfg) for i in range(cfg.num_layers)])
        for ours, hf in _layer_names(cfg).items()}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some exporters also write the tied copy
    else:
        out["lm_head"] = take("lm_head.weight", expected["lm_head"].shape[::-1]).T
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
