"""HF interop: our decoder against transformers' torch models (the reference).

Parity: a random-weight tiny model of each family is built by transformers,
saved with save_pretrained, loaded by `load_hf`; logits on random tokens agree
to 1e-4 in float32. Round trip: `save_hf` -> transformers -> same logits.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_lm.models.config import ModelConfig  # noqa: E402
from jaxrl_lm.models.decoder import Decoder  # noqa: E402
from jaxrl_lm.models.default import DEFAULT_CONFIG, default_policy  # noqa: E402
from jaxrl_lm.models.hf import build_model, load_hf, save_hf  # noqa: E402
from jaxrl_lm.models.tokenizer import VOCAB_SIZE, char_tokenizer_hf  # noqa: E402

TOL = 1e-4
V = 272  # >= both test tokenizers (128 characters, 257 byte-level ids)
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# Each family with the switches that distinguish it; non-default theta, untied
# heads and a head_dim != D / H so a wrong reshape or constant cannot pass.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(attention_bias=True, tie_word_embeddings=False, rope_theta=500.0,
                   rms_norm_eps=1e-5)),
    "llama_tied_mha": ("LlamaConfig", "LlamaForCausalLM",
                       dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(tie_word_embeddings=False, rope_theta=1e6)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=24, num_key_value_heads=1)),
}


def _byte_tokenizer():
    """A Qwen2Tokenizer over the 256 byte-level symbols (no merges): what transformers
    insists on for model_type qwen2."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    return transformers.Qwen2Tokenizer(vocab=vocab, merges=[])


def _tokenizer(family: str):
    return _byte_tokenizer() if family.startswith("qwen2") else char_tokenizer_hf()


def _hf_model(family: str, seed: int = 0):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra})
    model = getattr(transformers, model_cls)(cfg).float().eval()
    with torch.no_grad():  # large random weights everywhere, norms and biases included
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _tokens(seed: int, shape=(3, 13), vocab: int = V) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape)


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids_bt):
    pos_bt = jnp.broadcast_to(jnp.arange(ids_bt.shape[1]), ids_bt.shape)
    return nnx.merge(graphdef, state)(ids_bt, pos_bt)


def _our_logits(model, ids: np.ndarray) -> np.ndarray:
    # one compiled program per model instead of many eager dispatches (test speed)
    return np.asarray(_forward(*nnx.split(model), jnp.asarray(ids, jnp.int32)))


def write_hf_folders(tmp_path_factory, families, hf_model, tokenizer) -> dict:
    """family -> (folder, torch model): each family's random model and tokenizer
    written with save_pretrained (shared with test_models_families.py)."""
    out = {}
    for family in families:
        path = tmp_path_factory.mktemp(family)
        model = hf_model(family)
        model.save_pretrained(path)
        tokenizer(family).save_pretrained(path)
        out[family] = (path, model)
    return out


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    return write_hf_folders(tmp_path_factory, FAMILIES, _hf_model, _tokenizer)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(hf_folders, family):
    path, ref = hf_folders[family]
    model, tok = load_hf(path)
    ids = _tokens(1)
    want = _torch_logits(ref, ids)
    got = _our_logits(model, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    assert np.abs(want).max() > 1.0  # the comparison is not between near-zero logits
    assert tok.decode(tok.encode("ab c\n")) == "ab c\n"


def test_sharded_index(tmp_path):
    ref = _hf_model("qwen2", seed=3)
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    _byte_tokenizer().save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, _ = load_hf(tmp_path)
    ids = _tokens(2)
    assert np.abs(_our_logits(model, ids) - _torch_logits(ref, ids)).max() <= TOL


def _perturbed(cfg: ModelConfig, seed: int) -> Decoder:
    """A Decoder whose every parameter (norms, biases) is random, not its init value."""
    rng = np.random.default_rng(seed)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))))
    pure = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape).astype(np.float32), abstract)
    return build_model(cfg, pure)


ROUND_TRIP = {
    "llama": ModelConfig(vocab_size=V, hidden_size=64, intermediate_size=80, num_layers=2,
                         num_heads=4, num_kv_heads=2, tie_embeddings=False,
                         attention_bias=True, attention_out_bias=True, rope_theta=300.0),
    "qwen2": DEFAULT_CONFIG.replace(vocab_size=V, num_layers=2, attention_bias=True,
                                    value_head=True),
    "gemma": ModelConfig(vocab_size=V, hidden_size=48, intermediate_size=64, num_layers=2,
                         num_heads=2, num_kv_heads=1, head_dim=32, activation="gelu_tanh",
                         norm_offset=1.0, scale_embeddings=True, tie_embeddings=True),
}


@pytest.mark.parametrize("family", list(ROUND_TRIP))
def test_save_hf_loads_in_transformers(tmp_path, family):
    cfg = ROUND_TRIP[family]
    model = _perturbed(cfg, seed=5)
    save_hf(model, _tokenizer(family), tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert ref.config.model_type == family
    ids = _tokens(4)
    want = _our_logits(model, ids)
    assert np.abs(_torch_logits(ref.float().eval(), ids) - want).max() <= TOL
    # and back: the same parameters, value head included, come out of load_hf
    again, tok = load_hf(tmp_path)
    assert again.config == cfg
    np.testing.assert_array_equal(_our_logits(again, ids), want)
    if cfg.value_head:
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        np.testing.assert_array_equal(np.asarray(again.values(jnp.asarray(ids), pos)),
                                      np.asarray(model.values(jnp.asarray(ids), pos)))
    assert tok.decode(tok.encode("a b\n  c")) == "a b\n  c"


def test_save_hf_refuses_a_tokenizer_transformers_would_replace(tmp_path):
    with pytest.raises(ValueError, match="Qwen2Tokenizer"):
        save_hf(Decoder(ROUND_TRIP["qwen2"], rngs=nnx.Rngs(0)), char_tokenizer_hf(), tmp_path)


def test_default_policy_is_tiny_and_loads_through_the_loader(tmp_path):
    model, tok = default_policy(jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 1_000_576
    assert model.config == DEFAULT_CONFIG
    assert len(tok) == DEFAULT_CONFIG.vocab_size
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    other, _ = default_policy(jax.random.key(1))
    ids = _tokens(6, (2, 9), VOCAB_SIZE)
    assert np.abs(_our_logits(model, ids) - _our_logits(other, ids)).max() > 1e-3
    # the default is an ordinary HF folder: transformers computes the same logits
    save_hf(model, tok, tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert np.abs(_torch_logits(ref.float().eval(), ids) - _our_logits(model, ids)).max() <= TOL


def test_dtype_options(hf_folders):
    path, ref = hf_folders["qwen2"]
    model, _ = load_hf(path, dtype="bfloat16", param_dtype="float32", value_head=True)
    assert model.embed[...].dtype == jnp.float32
    assert model.config.compute_dtype == jnp.bfloat16
    ids = _tokens(7)
    err = np.abs(_our_logits(model, ids) - _torch_logits(ref, ids)).max()
    assert err < 0.5  # bfloat16 compute: close, not exact
    np.testing.assert_array_equal(np.asarray(model.value_head.kernel[...]), 0.0)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def qwen_copy(hf_folders, tmp_path):
    src, _ = hf_folders["qwen2"]
    for name in os.listdir(src):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    return tmp_path


@pytest.mark.parametrize("changes, match", [
    (dict(model_type="gemma3"),
     r"model_type='gemma3'.*supported: llama, qwen2, qwen3, mistral, gemma, gemma2, gemma3_text"),
    (dict(model_type="phi3"), r"model_type='phi3'.*supported"),
    (dict(architectures=["Qwen2ForSequenceClassification"]),
     "architectures lists 'Qwen2ForSequenceClassification'"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0}),
     r"rope_type='yarn' is not supported; supported: default, llama3"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
     "rope_type='llama3' needs 'low_freq_factor'"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(use_sliding_window=True, sliding_window=4, layer_types=["sliding_attention"]),
     r"layer_types=\['sliding_attention'\] must list 2 of full_attention, sliding_attention"),
    (dict(use_sliding_window=True, sliding_window=4,
          layer_types=["chunked_attention", "full_attention"]), "layer_types="),
    (dict(hidden_act="relu"), "hidden_act='relu'"),
    (dict(model_type="qwen3"), r"missing tensor 'model\.layers\.0\.self_attn\.q_norm\.weight'"),
    (dict(model_type="gemma2"),
     r"missing tensor 'model\.layers\.0\.pre_feedforward_layernorm\.weight'"),
    (dict(num_hidden_layers=3, layer_types=["full_attention"] * 3),
     r"missing tensor 'model\.layers\.2\."),
    (dict(hidden_size=32), r"'model\.embed_tokens\.weight' has shape \(272, 64\); "
     r"config.json implies \(272, 32\)"),
    (dict(head_dim=8), r"'model\.layers\.0\.self_attn\.q_proj\.weight' has shape \(64, 64\); "
     r"config.json implies \(32, 64\)"),
])
def test_bad_config_is_refused(qwen_copy, changes, match):
    _edit_config(qwen_copy, **changes)
    with pytest.raises(ValueError, match=match):
        load_hf(qwen_copy)


def test_bad_folders_are_refused(qwen_copy, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="not a directory"):
        load_hf(empty / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        load_hf(empty)
    _edit_config(qwen_copy)  # untouched config
    (qwen_copy / "tokenizer.json").unlink()
    (qwen_copy / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_hf(qwen_copy)
    (qwen_copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no \*\.safetensors"):
        load_hf(qwen_copy)


def test_missing_shard_is_refused(tmp_path):
    _hf_model("llama_tied_mha").save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    (tmp_path / sorted(set(index["weight_map"].values()))[-1]).unlink()
    with pytest.raises(ValueError, match="lists .* which is missing"):
        load_hf(tmp_path)


def _damage_tensors(path, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / "config.json").write_text('{"model_type": '), r"config\.json' is not valid JSON"),
    (lambda p: (p / "config.json").write_bytes(b'{"model_type": "caf\xe9"}'),
     r"config\.json' is not UTF-8 text"),
    (lambda p: (p / "config.json").write_text("[]"), "expected a JSON object, got list"),
    (lambda p: _edit_config(p, num_attention_heads="4"),
     "num_attention_heads='4' must be a positive integer"),
    (_truncate, r"model\.safetensors' is not a readable safetensors file"),
    (lambda p: (p / "model.safetensors.index.json").write_text("{"),
     r"model\.safetensors\.index\.json' is not valid JSON"),
    (lambda p: _damage_tensors(p, lambda t: t.update({
        "v_head.summary.weight": np.zeros((1, 64), np.float32),
        "v_head.summary.bias": np.zeros((2,), np.float32)})),
     r"tensor 'v_head\.summary\.bias' has shape \(2,\); config\.json implies \(1,\)"),
    (lambda p: _damage_tensors(p, lambda t: t.update({
        "model.layers.1.mlp.down_proj.weight": t["model.layers.1.mlp.down_proj.weight"].T.copy()})),
     r"tensor 'model\.layers\.1\.mlp\.down_proj\.weight' has shape \(96, 64\); "
     r"config\.json implies \(64, 96\)"),
])
def test_damaged_folders_raise_hf_load_error(qwen_copy, damage, match):
    """Every damaged file is an HFLoadError naming it (the CLI prints it as one
    `error:` line); a tensor's shape is checked, and named, before any reshape.
    check_hf_folder, which reads no weights, finds the same."""
    from jaxrl_lm.models.hf import HFLoadError, check_hf_folder

    damage(qwen_copy)
    with pytest.raises(HFLoadError, match=match):
        load_hf(qwen_copy)
    with pytest.raises(HFLoadError, match=match):
        check_hf_folder(qwen_copy)


def test_check_hf_folder_gives_the_config_load_hf_builds(hf_folders):
    from jaxrl_lm.models.hf import check_hf_folder

    for family in ("qwen2", "gemma"):
        path, _ = hf_folders[family]
        assert check_hf_folder(path, value_head=True) == \
            load_hf(path, value_head=True)[0].config
