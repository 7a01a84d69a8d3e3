"""Load and save Hugging Face folders (config.json + safetensors + tokenizer).

Supported `model_type`s: llama (incl. Llama 3.1+ "llama3" RoPE), qwen2, qwen3,
mistral, gemma, gemma2, gemma3_text (see config.py for what each switches on).
Everything the decoder cannot reproduce exactly (other RoPE types, MLP biases,
partial rotary, bidirectional attention, other architectures) is refused with a
ValueError naming the config field, rather than loaded approximately. Every
reason a folder cannot be loaded (a missing or unreadable file, bad JSON, a
truncated safetensors file, a tensor missing, extra or of the wrong shape) is
an `HFLoadError` (a ValueError) naming the file or tensor; `check_hf_folder`
finds all of them but a broken tokenizer without reading the weights.
`load_hf(path, mesh=mesh)` puts every parameter straight onto a device mesh,
each device reading only its slices of the files (sharded_load.py).

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
from jaxrl_lm.models.hf_config import (SUPPORTED_MODEL_TYPES, HFLoadError,  # noqa: F401
                                       config_from_hf, config_to_hf, model_type_of)
from jaxrl_lm.models.hf_config import V_HEAD as _V_HEAD, layer_names as _layer_names
from jaxrl_lm.models.tokenizer import quiet_transformers

# Buffers some exporters write next to the weights; they are recomputed, not loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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
        raise HFLoadError(f"path={str(path)!r} is not a directory (expected an HF model folder "
                          "with config.json, *.safetensors and tokenizer files)")
    if not (path / "config.json").is_file():
        raise HFLoadError(f"path={str(path)!r} has no config.json")
    return path


def _read_json(file: pathlib.Path) -> Any:
    """A JSON file's data; HFLoadError naming the file when it is unreadable, not
    UTF-8 or not JSON."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except OSError as e:
        raise HFLoadError(f"{str(file)!r}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise HFLoadError(f"{str(file)!r} is not UTF-8 text (byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise HFLoadError(f"{str(file)!r} is not valid JSON: {e}") from None


def read_hf_config(path) -> dict:
    """The raw config.json dict of an HF folder."""
    hf = _read_json(_folder(path) / "config.json")
    if not isinstance(hf, dict):
        raise HFLoadError(f"{str(pathlib.Path(path) / 'config.json')!r}: expected a JSON "
                          f"object, got {type(hf).__name__}")
    return hf


def load_config(path, *, dtype: str = "float32", param_dtype: str | None = None,
                value_head: bool = False) -> ModelConfig:
    """ModelConfig of an HF folder (config.json only)."""
    return config_from_hf(read_hf_config(path), dtype=dtype, param_dtype=param_dtype,
                          value_head=value_head)


def load_tokenizer(path):
    """The folder's tokenizer through transformers' AutoTokenizer, local files only."""
    quiet_transformers()
    from transformers import AutoTokenizer

    path = _check_tokenizer_files(_folder(path))
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001  (transformers / tokenizers raise many kinds)
        msg = " ".join(str(e).split())[:300]
        raise HFLoadError(f"path={str(path)!r}: its tokenizer files do not load "
                          f"({type(e).__name__}: {msg})") from e


def _check_tokenizer_files(path: pathlib.Path) -> pathlib.Path:
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model",
                                              "vocab.json", "tokenizer_config.json")):
        raise HFLoadError(f"path={str(path)!r} has no tokenizer files (tokenizer.json, "
                          "tokenizer_config.json, ...)")
    return path


def _weight_files(path: pathlib.Path) -> list[pathlib.Path]:
    """model.safetensors, or the shards model.safetensors.index.json lists."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise HFLoadError(f"{str(index)!r}: expected a JSON object with a 'weight_map' "
                              "of tensor name -> file name")
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise HFLoadError(f"path={str(path)!r} has no *.safetensors weights (nor "
                          "model.safetensors.index.json); .bin/.pth checkpoints are not read")
    for name in files:
        if not (path / name).is_file():
            raise HFLoadError(f"{index.name} lists {name!r}, which is missing from "
                              f"{str(path)!r}")
    return [path / name for name in files]


def _open_safetensors(file: pathlib.Path):
    """safe_open, with a damaged file (truncated, bad header) an HFLoadError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise HFLoadError(f"{str(file)!r} is not a readable safetensors file ({e}); "
                          "a truncated or partial download?") from None


def read_safetensor_shapes(path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of a folder, from the file headers only."""
    shapes = {}
    for file in _weight_files(_folder(path)):
        with _open_safetensors(file) as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a folder: model.safetensors, or the shards its index lists."""
    from safetensors import SafetensorError

    tensors = {}
    for file in _weight_files(_folder(path)):
        with _open_safetensors(file) as f:
            for k in f.keys():
                try:
                    tensors[k] = f.get_tensor(k)
                except (SafetensorError, TypeError, ValueError) as e:
                    raise HFLoadError(f"{str(file)!r}: tensor {k!r} cannot be read "
                                      f"({e})") from None
    return tensors


# -- weights --------------------------------------------------------------------
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


def _expected_tensors(cfg: ModelConfig, expected: dict) -> tuple[dict, dict]:
    """(HF name -> shape of every tensor the config needs, HF name -> shape of those
    it may have: a tied model's lm_head copy, a value head), in loading order."""
    need = {"model.embed_tokens.weight": expected["embed"].shape,
            "model.norm.weight": expected["final_norm"].shape}
    for ours, hf in _layer_names(cfg).items():
        shape = _hf_shape(ours, expected["layers"][ours].shape[1:])
        need.update({f"model.layers.{i}.{hf}": shape for i in range(cfg.num_layers)})
    may = {}
    if cfg.tie_embeddings:
        may["lm_head.weight"] = expected["embed"].shape  # some exporters write the tied copy
    else:
        need["lm_head.weight"] = expected["lm_head"].shape[::-1]
    if cfg.value_head:
        may.update({_V_HEAD[0]: (1, cfg.hidden_size), _V_HEAD[1]: (1,)})
    return {k: tuple(v) for k, v in need.items()}, {k: tuple(v) for k, v in may.items()}


def check_tensor_shapes(shapes: dict[str, tuple[int, ...]], cfg: ModelConfig,
                        expected: dict) -> None:
    """HFLoadError naming the first tensor missing, of the wrong shape (found and
    expected) or unused, before any tensor is reshaped. `shapes`: HF name -> shape;
    `expected`: a pure dict of ShapeDtypeStructs, e.g. from an abstract Decoder."""
    shapes = {k: tuple(v) for k, v in shapes.items() if not k.endswith(_IGNORED_SUFFIXES)}
    need, may = _expected_tensors(cfg, expected)
    missing = [k for k in need if k not in shapes]
    if _V_HEAD[0] in shapes and cfg.value_head and _V_HEAD[1] not in shapes:
        missing.append(_V_HEAD[1])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HFLoadError(f"safetensors: missing tensor {missing[0]!r} required by the "
                          f"config{more}")
    for key, want in {**need, **{k: v for k, v in may.items() if k in shapes}}.items():
        if shapes[key] != want:
            raise HFLoadError(f"safetensors: tensor {key!r} has shape {shapes[key]}; "
                              f"config.json implies {want}")
    extra = sorted(set(shapes) - set(need) - set(may))
    if extra:
        raise HFLoadError(f"safetensors: {len(extra)} tensors the {model_type_of(cfg)} config "
                          f"does not use, e.g. {extra[:3]}; the checkpoint and config.json "
                          "disagree or the architecture is not supported")


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig,
                   expected: dict) -> dict:
    """HF tensors -> the decoder's pure parameter dict, shape-checked against `expected`
    (a pure dict of ShapeDtypeStructs, e.g. from an abstract Decoder) before any
    reshape, so a wrong tensor is named (HFLoadError), not a failed reshape."""
    check_tensor_shapes({k: v.shape for k, v in tensors.items()}, cfg, expected)
    out: dict[str, Any] = {"embed": tensors["model.embed_tokens.weight"],
                           "final_norm": tensors["model.norm.weight"]}
    out["layers"] = {
        ours: np.stack([_to_ours(ours, tensors[f"model.layers.{i}.{hf}"], cfg)
                        for i in range(cfg.num_layers)])
        for ours, hf in _layer_names(cfg).items()}
    if not cfg.tie_embeddings:
        out["lm_head"] = tensors["lm_head.weight"].T
    if cfg.value_head:
        if _V_HEAD[0] in tensors:
            out["value_head"] = {"kernel": tensors[_V_HEAD[0]].reshape(-1),
                                 "bias": tensors[_V_HEAD[1]].reshape(())}
        else:  # a fresh value head: zeros, so initial values are 0 and no key is needed
            dt = expected["value_head"]["kernel"].dtype
            out["value_head"] = {"kernel": np.zeros((cfg.hidden_size,), dt),
                                 "bias": np.zeros((), dt)}
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
    """A Decoder holding `pure` (host arrays, or device arrays, which are kept as
    they are, sharding included, when of the right dtype), without running the
    random initialiser."""
    from jaxrl_lm.models.decoder import Decoder

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    flat_exp = nnx.traversals.flatten_mapping(nnx.to_pure_dict(state))
    flat = nnx.traversals.flatten_mapping(pure)
    values = {k: jax.numpy.asarray(flat[k], dtype=v.dtype) for k, v in flat_exp.items()}
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(values))
    return nnx.merge(graphdef, state)


def _abstract_params(cfg: ModelConfig) -> dict:
    from jaxrl_lm.models.decoder import Decoder

    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))))


def check_hf_folder(path, *, dtype: str = "float32", param_dtype: str | None = None,
                    value_head: bool | None = None) -> ModelConfig:
    """The ModelConfig `load_hf` would build, after every check it makes that needs
    no weights: config.json, the safetensors headers (file intact, each tensor's name
    and shape) and that tokenizer files exist. Raises HFLoadError; reads no tensor
    data, so the CLI runs it before anything is compiled or written."""
    path = _folder(path)
    hf = read_hf_config(path)
    shapes = read_safetensor_shapes(path)
    if value_head is None:
        value_head = _V_HEAD[0] in shapes
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, value_head=value_head)
    check_tensor_shapes(shapes, cfg, _abstract_params(cfg))
    _check_tokenizer_files(path)
    return cfg


def load_hf(path, *, dtype: str = "float32", param_dtype: str | None = None,
            value_head: bool | None = None, mesh: jax.sharding.Mesh | None = None):
    """(Decoder, tokenizer) from an HF folder: config.json, model.safetensors or a
    sharded model.safetensors.index.json, and tokenizer files (no network).

    dtype is the compute dtype, param_dtype the storage dtype (default: dtype).
    value_head: None adds one iff the folder has v_head.* tensors; True always
    (zeros when absent); False never (v_head.* tensors then raise as unexpected).
    mesh: None reads every tensor to the host, then builds the model (on the
    default device); a ("data", "fsdp", "tensor") mesh puts each parameter on it
    as the train engine shards it (train/mesh.py's rules), each device reading
    only its slices of the files (`sharded_load`); the values are the same.
    A folder that cannot be loaded raises HFLoadError naming the file or tensor.
    """
    path = _folder(path)
    hf = read_hf_config(path)
    if mesh is not None:
        return _load_sharded(path, hf, mesh, dtype=dtype, param_dtype=param_dtype,
                             value_head=value_head), load_tokenizer(path)
    tensors = read_safetensors(path)
    if value_head is None:
        value_head = _V_HEAD[0] in tensors
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, value_head=value_head)
    pure = params_from_hf(tensors, cfg, _abstract_params(cfg))
    return build_model(cfg, pure), load_tokenizer(path)


def open_weights(path) -> dict[str, Any]:
    """HF tensor name -> the open safetensors handle (numpy) of the file holding it;
    headers only are read."""
    handles = {}
    for file in _weight_files(_folder(path)):
        f = _open_safetensors(file)
        handles.update({k: f for k in f.keys()})
    return handles


def _load_sharded(path: pathlib.Path, hf: dict, mesh, *, dtype: str, param_dtype: str | None,
                  value_head: bool | None):
    from jaxrl_lm.models import sharded_load

    files = open_weights(path)
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k, f in files.items()}
    if value_head is None:
        value_head = _V_HEAD[0] in shapes
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, value_head=value_head)
    expected = _abstract_params(cfg)
    check_tensor_shapes(shapes, cfg, expected)
    pure = sharded_load.load_params(files, cfg, expected, sharded_load.mesh_shardings(cfg, mesh))
    return build_model(cfg, pure)


def save_hf(model, tokenizer, path, *, max_position_embeddings: int = 2048) -> pathlib.Path:
    """Write `model` and `tokenizer` as an HF folder that transformers loads:
    config.json, model.safetensors (float weights as stored; LoRA adapters merged
    into their base weights, `lora.merged_params`) and tokenizer files."""
    from safetensors.numpy import save_file

    from jaxrl_lm.models import lora

    cfg = model.config
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(lora.merged_params(model), cfg)
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
