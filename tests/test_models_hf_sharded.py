"""Loading an HF folder straight onto a mesh (`load_hf(..., mesh=...)`,
models/sharded_load.py): each device reads only its slices.

- the slice mapping: any block of our layout read from the HF tensor equals the
  same block of the whole tensor mapped by hf.py's `_to_ours`;
- bit-identical params to the plain `load_hf`, placed as the train engine's rule
  table shards them, for tiny Llama and Qwen2 folders written by transformers
  (several safetensors files and an index), on fsdp 8 and fsdp 4 x tensor 2;
- host memory: in a fresh process, the peak of the numpy / Python allocations
  (`tracemalloc`: numpy buffers, safetensors' read buffers, Python objects; not
  XLA's device buffers, nor the page cache behind safetensors' mmap) while
  loading a 311 MB bfloat16 model onto 8 devices stays under twice the largest
  per-device slice of a parameter (8.2 MB) plus a fixed overhead, where the
  plain loader's holds the whole model and more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrl_lm.models import hf, sharded_load
from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.train import mesh as mesh_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Every size divisible by 8 (V = 8 x 34) so fsdp 8 and tensor 2 really split them.
COMMON = dict(vocab_size=272, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
FAMILIES = {  # untied + o_proj bias | tied + q/k/v biases
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True,
                                                      tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
}
MESHES = {"fsdp8": (1, 8, 1), "fsdp4_tensor2": (1, 4, 2)}


def _flat(model) -> dict:
    return nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


# -- the slice mapping ------------------------------------------------------------------
def _kinds(cfg: ModelConfig):
    D, F, Hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    H, K = cfg.num_heads, cfg.num_kv_heads
    return {"q_proj": (H * Hd, D), "k_proj": (K * Hd, D), "o_proj": (D, H * Hd),
            "q_bias": (H * Hd,), "v_bias": (K * Hd,), "gate_proj": (F, D),
            "down_proj": (D, F), "attn_norm": (D,)}


def test_any_block_read_from_the_hf_tensor_is_that_block_of_our_layout():
    cfg = ModelConfig(vocab_size=40, hidden_size=24, intermediate_size=20, num_layers=1,
                      num_heads=6, num_kv_heads=2, head_dim=8)
    rng = np.random.default_rng(0)
    for name, shape in _kinds(cfg).items():
        w = rng.standard_normal(shape).astype(np.float32)
        ours = hf._to_ours(name, w, cfg)
        spec = sharded_load._spec(name, shape, cfg)
        for _ in range(20):  # random blocks, head_dim cut too (the rules never cut it)
            bounds = []
            for n in ours.shape:
                lo = int(rng.integers(0, n))
                bounds.append((lo, int(rng.integers(lo + 1, n + 1))))
            got = sharded_load.read_slice(w, spec, tuple(bounds))
            want = ours[tuple(slice(lo, hi) for lo, hi in bounds)]
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {bounds}")
    lm_head = rng.standard_normal((40, 24)).astype(np.float32)  # [V, D] -> ours [D, V]
    got = sharded_load.read_slice(lm_head, sharded_load._spec("lm_head", (40, 24), cfg),
                                  ((3, 10), (8, 40)))
    np.testing.assert_array_equal(got, lm_head.T[3:10, 8:40])


# -- bit-identical to load_hf, placed by the rule table ---------------------------------
def _hf_folder(tmp_path_factory, family: str):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(1)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**COMMON, **extra))
    with torch.no_grad():  # every weight random, norms and biases too
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp(family)
    model.float().save_pretrained(path, max_shard_size="60KB")  # several files + an index
    from jaxrl_lm.models.tokenizer import char_tokenizer_hf
    if family == "qwen2":  # transformers forces Qwen2Tokenizer on qwen2 folders
        from tokenizers.pre_tokenizers import ByteLevel

        vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
        transformers.Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    else:
        char_tokenizer_hf().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {f: _hf_folder(tmp_path_factory, f) for f in FAMILIES}


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sharded_load_is_bit_identical_to_load_hf(folders, family, mesh_name, monkeypatch):
    monkeypatch.setattr(sharded_load, "CHUNK_BYTES", 256)  # every slice read in pieces
    path = folders[family]
    assert len(json.loads((path / "model.safetensors.index.json").read_text())
               ["weight_map"].values()) > 1 and len(list(path.glob("*.safetensors"))) > 2
    mesh = mesh_lib.make_mesh(MESHES[mesh_name])
    ref, _ = hf.load_hf(path)
    got, tok = hf.load_hf(path, mesh=mesh)
    assert got.config == ref.config and tok is not None
    want_sh = nnx.traversals.flatten_mapping(sharded_load.mesh_shardings(got.config, mesh))
    a, b = _flat(ref), _flat(got)
    assert a.keys() == b.keys() == want_sh.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=str(k))
        assert b[k].sharding == want_sh[k], k
    # the slices really are cut: the rule table splits these over the mesh
    tensor = "tensor" if mesh.shape["tensor"] > 1 else None
    assert b[("embed",)].sharding.spec == P(tensor, "fsdp")
    assert b[("layers", "q_proj")].sharding.spec == P(None, "fsdp", tensor, None)
    assert b[("layers", "down_proj")].sharding.spec == P(None, tensor, "fsdp")
    cuts = {str(s.index) for s in b[("layers", "gate_proj")].addressable_shards}
    assert len(cuts) == 8  # 8 different slices


def test_sharded_load_casts_and_adds_a_value_head_as_load_hf_does(folders):
    mesh = mesh_lib.make_mesh((2, 2, 2))
    kw = dict(dtype="bfloat16", param_dtype="bfloat16", value_head=True)
    ref, _ = hf.load_hf(folders["qwen2"], **kw)  # float32 files -> bfloat16 params
    got, _ = hf.load_hf(folders["qwen2"], mesh=mesh, **kw)
    a, b = _flat(ref), _flat(got)
    assert a.keys() == b.keys() and ("value_head", "kernel") in b
    for k in a:
        assert b[k].dtype == jax.numpy.bfloat16, k
        np.testing.assert_array_equal(np.asarray(a[k]).view(np.uint16),
                                      np.asarray(b[k]).view(np.uint16), err_msg=str(k))


def test_sharded_load_refuses_what_load_hf_refuses(folders, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folders["llama"], bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (bad / victim).unlink()
    with pytest.raises(hf.HFLoadError, match=f"lists {victim!r}, which is missing"):
        hf.load_hf(bad, mesh=mesh_lib.make_mesh((1, 8, 1)))


# -- host memory ------------------------------------------------------------------------
BIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_layers=8,
           num_heads=16, num_kv_heads=4, tie_embeddings=False, attention_bias=False)
# Traced host bytes beyond two slices: one chunk being read into a slice
# (sharded_load.CHUNK_BYTES, 4 MiB), and the abstract model, the shardings, the
# files' headers, the jax.Array objects: 1.2-1.4 MiB measured.
OVERHEAD = sharded_load.CHUNK_BYTES + 2 * 2**20

MEASURE = r"""
import json, sys, tracemalloc
import jax, numpy as np
from flax import nnx
from jaxrl_lm.models import hf
from jaxrl_lm.train import mesh as mesh_lib

path, mode, shape = sys.argv[1], sys.argv[2], tuple(json.loads(sys.argv[3]))
# XLA:CPU adopts a 64-byte-aligned numpy buffer as the device's memory instead of
# copying it, so a device slice could stay on the traced heap; copy it on the device
# (untraced) and drop the adopted one, as an accelerator's device_put copies, so that
# tracemalloc sees the host's staging buffers only. (JAX lets go of a transferred
# host buffer at the next transfer either way: the "previous slice" of sharded_load.)
_put = jax.device_put


def put_copy(x, *args, **kwargs):
    adopted = _put(x, *args, **kwargs)
    out = jax.numpy.copy(adopted).block_until_ready()
    adopted.delete()
    return out


jax.device_put = put_copy
put_copy(np.zeros(4, np.float32), jax.devices()[0])  # the copy's first compile: imports
mesh = mesh_lib.make_mesh(shape)
config = hf.read_hf_config(path)
tracemalloc.start()
if mode == "sharded":
    model = hf._load_sharded(hf._folder(path), config, mesh, dtype="bfloat16",
                             param_dtype="bfloat16", value_head=False)
else:
    cfg = hf.config_from_hf(config, dtype="bfloat16", param_dtype="bfloat16")
    model = hf.build_model(cfg, hf.params_from_hf(hf.read_safetensors(path), cfg,
                                                  hf._abstract_params(cfg)))
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
print(json.dumps(dict(
    peak=peak, current=current, total=sum(x.nbytes for x in leaves),
    max_slice=max(s.data.nbytes for x in leaves for s in x.addressable_shards),
    device_share=max(sum(s.data.nbytes for x in leaves for s in x.addressable_shards
                         if s.device == d) for d in jax.devices()))))
"""


def _write_big(path) -> None:
    """A random bfloat16 Llama-shaped folder of 311 MB in three safetensors files."""
    import ml_dtypes
    from safetensors.numpy import save_file

    cfg = ModelConfig(**BIG, dtype="bfloat16", param_dtype="bfloat16")
    need, _ = hf._expected_tensors(cfg, hf._abstract_params(cfg))
    rng = np.random.default_rng(0)
    names = list(need)
    parts = [names[i::3] for i in range(3)]
    weight_map = {}
    for j, part in enumerate(parts):
        file = f"model-{j + 1:05d}-of-00003.safetensors"
        tensors = {n: rng.standard_normal(need[n], np.float32).astype(ml_dtypes.bfloat16)
                   for n in part}
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    hf.write_config(cfg, path)


def _measure(path, mode: str, shape) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path), mode, json.dumps(shape)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_host_memory_while_loading_stays_near_one_slice(tmp_path):
    _write_big(tmp_path)
    for shape in ((1, 8, 1), (1, 4, 2)):
        m = _measure(tmp_path, "sharded", shape)
        assert m["total"] == 2 * 155_730_944  # bfloat16 params: the whole model, 311 MB
        assert m["max_slice"] == 2 * 1024 * 32000 // 8  # embed's / lm_head's slice, 8.2 MB
        # measured: 21.0 MiB = 2 x 7.8 MiB + 5.4 MiB, on both meshes
        assert m["peak"] <= 2 * m["max_slice"] + OVERHEAD, m
        assert m["peak"] < m["device_share"], m  # less than one device's share (39 MB)
        assert m["current"] < 2 * 2**20, m  # nothing left on the host
    plain = _measure(tmp_path, "plain", (1, 8, 1))  # measured: 470 MiB, 1.58 x the model
    assert plain["peak"] >= plain["total"], plain  # the whole model on the host
