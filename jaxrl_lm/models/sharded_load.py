"""Load an HF folder's weights straight onto a device mesh: each device's slice
of each parameter is read from the safetensors files (safetensors'
`get_slice(name)[index]` reads only those bytes), in HF layout, mapped to our
layout on the host and put on that device; no parameter is ever whole on the
host, and a multi-host run reads on each host only its own devices' slices.

The mapping (see hf.py's docstring for the layouts): each HF tensor is viewed
as `groups` (one tuple per HF dimension: the sizes it splits into, e.g. q_proj's
rows [H*Hd] as (H, Hd)) and our per-layer tensor is that view transposed by
`perm`. A block of ours is therefore a block of the view; it becomes the HF
rows/columns `lead.start * inner : lead.stop * inner` of each split dimension
(inner = the product of its trailing sizes, read whole and sliced after the
reshape), the contiguous run that holds it.

Host memory while loading (numpy and Python buffers): the device slice being
built, in our layout and dtype (stacked layer params [L, ...] included: it is
filled layer by layer), plus the piece being read into it (CHUNK_BYTES of the
slice, read along the HF tensor's first dimension), plus the previous slice,
which JAX lets go of only at the next transfer: under twice the largest
per-device slice of any parameter plus CHUNK_BYTES and a little bookkeeping
(measured in tests/test_models_hf_sharded.py). A slice that several devices
hold (replication over an axis) is read once. Not counted: the page cache
behind safetensors' mmap (column slices of a row-major tensor touch all its
pages).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jaxrl_lm.models.config import ModelConfig

# host bytes of a slice filled per read (the rest of the read's transient is this)
CHUNK_BYTES = 4 * 2**20
# (HF dimension -> the view sizes it splits into), perm: ours = view.transpose(perm)
Spec = tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]


def _spec(name: str, hf_shape: tuple[int, ...], cfg: ModelConfig) -> Spec:
    """How one (per-layer) HF tensor maps to our layout; see the module docstring."""
    Hd = cfg.head_dim
    heads = {"q": cfg.num_heads, "k": cfg.num_kv_heads, "v": cfg.num_kv_heads}
    if name in ("q_proj", "k_proj", "v_proj"):  # [N*Hd, D] -> [D, N, Hd]
        return ((heads[name[0]], Hd), (hf_shape[1],)), (2, 0, 1)
    if name in ("q_bias", "k_bias", "v_bias"):  # [N*Hd] -> [N, Hd]
        return ((heads[name[0]], Hd),), (0, 1)
    if name == "o_proj":  # [D, H*Hd] -> [H, Hd, D]
        return ((hf_shape[0],), (cfg.num_heads, Hd)), (1, 2, 0)
    if name.endswith("_proj") or name == "lm_head":  # [b, a] -> [a, b]
        return ((hf_shape[0],), (hf_shape[1],)), (1, 0)
    if name == "value_kernel":  # [1, D] -> [D]
        return ((), (hf_shape[1],)), (0,)
    if name == "value_bias":  # [1] -> []
        return ((),), ()
    return tuple((n,) for n in hf_shape), tuple(range(len(hf_shape)))


def read_slice(tensor: Any, spec: Spec, bounds: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Our-layout block [start:stop per dim] of one HF tensor (a safetensors slice
    object, or any array indexable by a tuple of slices), reading only the HF
    block that holds it."""
    groups, perm = spec
    view = [None] * len(perm)
    for i, p in enumerate(perm):
        view[p] = bounds[i]
    hf_index, shape, inner, k = [], [], [], 0
    for g in groups:
        if not g:  # a size-1 HF dimension our layout drops
            hf_index.append(slice(0, 1))
            continue
        (lo, hi), rest = view[k], math.prod(g[1:])
        hf_index.append(slice(lo * rest, hi * rest))
        shape += [hi - lo, *g[1:]]
        inner += [slice(None), *(slice(*view[j]) for j in range(k + 1, k + len(g)))]
        k += len(g)
    block = np.asarray(tensor[tuple(hf_index)])
    return block.reshape(shape)[tuple(inner)].transpose(perm)


def _bounds(index: tuple, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for s, n in zip(index, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"shard index {index} has a strided slice")
        out.append((start, stop))
    return tuple(out)


def assemble(shape: tuple[int, ...], dtype, sharding: jax.sharding.Sharding,
             read: Callable[[tuple[tuple[int, int], ...]], np.ndarray]) -> jax.Array:
    """The global array whose device slices are `read(bounds)` (numpy of `dtype`),
    like `jax.make_array_from_callback`, but one distinct slice at a time: it is
    read once, put on every addressable device that holds it, and dropped before
    the next is read (make_array_from_callback reads every device's slice, and a
    replicated one once per device, before placing any)."""
    groups: dict[tuple, list] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        groups.setdefault(_bounds(index, shape), []).append(device)
    placed = {}
    for bounds, devices in groups.items():
        host = np.asarray(read(bounds), dtype=dtype, order="C")
        for d in devices:
            placed[d] = jax.device_put(host, d)
        jax.block_until_ready([placed[d] for d in devices])  # the host copy may go now
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, list(placed.values()))


def _sources(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, str]]:
    """Our param path -> (kind for `_spec`, HF name; per-layer names use `{i}`)."""
    from jaxrl_lm.models.hf_config import V_HEAD as _V_HEAD, layer_names as _layer_names

    out = {("embed",): ("embed", "model.embed_tokens.weight"),
           ("final_norm",): ("final_norm", "model.norm.weight")}
    for ours, hf in _layer_names(cfg).items():
        out[("layers", ours)] = (ours, f"model.layers.{{i}}.{hf}")
    if not cfg.tie_embeddings:
        out[("lm_head",)] = ("lm_head", "lm_head.weight")
    if cfg.value_head:
        out[("value_head", "kernel")] = ("value_kernel", _V_HEAD[0])
        out[("value_head", "bias")] = ("value_bias", _V_HEAD[1])
    return out


def _fill(dst: np.ndarray, tensor: Any, spec: Spec, bounds: tuple[tuple[int, int], ...]) -> None:
    """dst[...] = our-layout block `bounds` of one HF tensor, read CHUNK_BYTES of
    `dst` at a time along the dimension that is the HF tensor's first (so each read
    is a run of whole HF rows or a strided block of them), cast on assignment."""
    groups, perm = spec
    if not groups or not groups[0] or dst.size == 0:  # scalars, the value head's [1, D]
        dst[...] = read_slice(tensor, spec, bounds)
        return
    c = perm.index(0)  # our dimension that is the lead of HF dimension 0
    lo, hi = bounds[c]
    step = max(1, CHUNK_BYTES * (hi - lo) // dst.nbytes)
    for a in range(lo, hi, step):
        b = min(hi, a + step)
        part = (*bounds[:c], (a, b), *bounds[c + 1:])
        dst[(slice(None),) * c + (slice(a - lo, b - lo),)] = read_slice(tensor, spec, part)


def _reader(files: dict[str, Any], cfg: ModelConfig, kind: str, name: str, stacked: bool,
            dtype) -> Callable[[tuple[tuple[int, int], ...]], np.ndarray]:
    """bounds -> that block of our param `kind` (a new array of `dtype`), read from
    HF tensor `name` (`{i}`: the layer, for a stacked param)."""
    from safetensors import SafetensorError

    from jaxrl_lm.models.hf_config import HFLoadError

    def fill(dst: np.ndarray, hf: str, bounds) -> None:
        if hf not in files:  # a fresh value head: zeros, as load_hf gives it
            dst[...] = 0
            return
        try:
            tensor = files[hf].get_slice(hf)
            _fill(dst, tensor, _spec(kind, tuple(tensor.get_shape()), cfg), bounds)
        except (SafetensorError, TypeError, ValueError) as e:
            raise HFLoadError(f"safetensors: tensor {hf!r} cannot be read ({e})") from None

    def read(bounds):
        out = np.empty([hi - lo for lo, hi in bounds], dtype)
        if not stacked:
            fill(out, name, bounds)
        else:
            for j, i in enumerate(range(*bounds[0])):
                fill(out[j], name.format(i=i), bounds[1:])
        return out

    return read


def load_params(files: dict[str, Any], cfg: ModelConfig, expected: dict,
                shardings: dict) -> dict:
    """The decoder's pure parameter dict as global jax.Arrays on `shardings` (a pure
    dict of Shardings shaped like `expected`, the abstract params), read slice by
    slice from `files` (HF name -> an open safetensors handle holding it), whose
    names and shapes the caller has checked (`hf.check_tensor_shapes`). A value
    head absent from the files loads as zeros."""
    flat_exp = nnx.traversals.flatten_mapping(expected)
    flat_sh = nnx.traversals.flatten_mapping(shardings)
    out = {}
    for path, (kind, name) in _sources(cfg).items():
        want = flat_exp[path]
        read = _reader(files, cfg, kind, name, path[0] == "layers", want.dtype)
        out[path] = assemble(tuple(want.shape), want.dtype, flat_sh[path], read)
    return nnx.traversals.unflatten_mapping(out)


def mesh_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> dict:
    """The pure dict of NamedShardings the train engine gives the params of a
    Decoder(cfg) on `mesh` (train/mesh.py's rule table)."""
    from jaxrl_lm.models.decoder import Decoder
    from jaxrl_lm.train import mesh as mesh_lib

    state = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    return nnx.to_pure_dict(mesh_lib.param_shardings(state, mesh))
