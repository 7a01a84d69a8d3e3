"""Model families beyond Llama-2/Qwen2/Gemma-1, each against transformers' torch model.

Per family, on a random tiny model with large random weights everywhere:
  (a) `load_hf` logits equal transformers' to 1e-4 (float32) on 40 tokens, longer
      than the sliding window (6) where the family has one;
  (c) greedy `sample` (prefill + KV-cache decode) equals transformers'
      `generate(do_sample=False)` for 64 new tokens, prompt + 64 > window;
  (b) `save_hf` of a perturbed decoder of that family loads in transformers
      with equal logits, and `load_hf` gives the same ModelConfig back.
Switch values (windows, soft caps, query scale, RoPE bases) are chosen so each
one changes the logits on these inputs: `test_each_switch_matters` checks that.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxrl_lm import sampling  # noqa: E402
from jaxrl_lm.models.config import ModelConfig  # noqa: E402
from jaxrl_lm.models.decoder import Decoder  # noqa: E402
from jaxrl_lm.models.hf import build_model, load_hf, save_hf  # noqa: E402
from jaxrl_lm.models.tokenizer import char_tokenizer_hf  # noqa: E402
from tests.test_hf import (_byte_tokenizer, _our_logits, _torch_logits,  # noqa: E402
                           write_hf_folders)

TOL = 1e-4
V = 272
W = 6  # sliding window: far shorter than the sequences below
T = 40
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              eos_token_id=None, bos_token_id=None, pad_token_id=0)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
FAMILIES = {
    # wavelengths of head_dim 16 at theta 1e4 span all three llama3 bands for N = 64
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(head_dim=24, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 1e4})),
    # qwen3 with its sliding layers (layer 1 slides: max_window_layers=1)
    "qwen3_sliding": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(head_dim=24, use_sliding_window=True, sliding_window=W,
                           max_window_layers=1, attention_bias=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(sliding_window=W, tie_word_embeddings=False)),
    # layer 0 slides, layer 1 is global; small caps so tanh bites
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(head_dim=24, sliding_window=W, query_pre_attn_scalar=20,
                    attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                    hidden_activation="gelu_pytorch_tanh")),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    dict(head_dim=24, num_hidden_layers=3, sliding_window=W,
                         query_pre_attn_scalar=20,
                         layer_types=["sliding_attention", "full_attention",
                                      "sliding_attention"],
                         rope_parameters={
                             "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
}


def _tokenizer(family: str):
    return _byte_tokenizer() if family.startswith("qwen") else char_tokenizer_hf()


def _hf_model(family: str, seed: int = 0):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **extra})
    cfg._attn_implementation = "eager"  # the reference math: soft-capping, sliding mask
    model = getattr(transformers, model_cls)(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _tokens(seed: int, shape=(2, T)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, shape)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    return write_hf_folders(tmp_path_factory, FAMILIES, _hf_model, _tokenizer)


def _hf_logp(ref, ids_1t: np.ndarray) -> np.ndarray:
    """[T - 1]: log p(ids[t] | ids[:t]) under the torch model, t >= 1."""
    with torch.no_grad():
        logits = ref(torch.tensor(ids_1t)).logits[0].float()
    t = ids_1t.shape[1]
    return torch.log_softmax(logits, -1)[np.arange(t - 1), ids_1t[0, 1:]].numpy()


def _check_greedy_matches_generate(model, ref, n_new: int = 64):
    """Greedy decode of two right-padded prompts (lengths 10 and 7 > W) vs generate;
    and the sampler's log-probs (from the cached forward) vs transformers' log-probs
    of the same tokens, which catches cache bugs that leave the argmax alone."""
    prompts = _tokens(11, (2, 10))
    lengths = np.array([10, 7])
    prompts[1, 7:] = 0
    out = sampling.sample(model, jnp.asarray(prompts, jnp.int32), jnp.asarray(lengths, jnp.int32),
                          jax.random.key(0), max_new_tokens=n_new, temperature=0.0)
    ours = np.asarray(out.tokens)
    for row in range(2):
        ids = torch.tensor(prompts[row:row + 1, :lengths[row]])
        with torch.no_grad():
            want = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=n_new, min_new_tokens=0, eos_token_id=None,
                                pad_token_id=0)[0, lengths[row]:].numpy()
        assert want.shape == (n_new,)
        np.testing.assert_array_equal(ours[row], want, err_msg=f"row {row}")
        full = np.concatenate([prompts[row, :lengths[row]], want])[None]
        np.testing.assert_allclose(np.asarray(out.logp[row]),
                                   _hf_logp(ref, full)[lengths[row] - 1:], atol=TOL)
    return prompts, lengths, out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_and_greedy_match_transformers(hf_folders, family):
    path, ref = hf_folders[family]
    model, _ = load_hf(path)
    ids = _tokens(1)
    want = _torch_logits(ref, ids)
    got = _our_logits(model, ids)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()
    assert np.abs(want).max() > 1.0
    _check_greedy_matches_generate(model, ref)


def test_gemma2_token_logprobs_are_soft_capped(hf_folders):
    """Training's `token_logprobs` sees the capped logits, as the sampler does."""
    path, ref = hf_folders["gemma2"]
    model, _ = load_hf(path)
    assert model.config.final_softcap == 4.0
    ids = _tokens(3, (1, 24))
    lp = np.asarray(sampling.token_logprobs(model, jnp.asarray(ids), jnp.ones(ids.shape)))
    np.testing.assert_allclose(lp[0, 1:], _hf_logp(ref, ids), atol=TOL)


def _perturbed(cfg: ModelConfig, seed: int) -> Decoder:
    rng = np.random.default_rng(seed)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))))
    pure = jax.tree.map(lambda a: rng.normal(0.0, 0.2, a.shape).astype(np.float32), abstract)
    return build_model(cfg, pure)


BASE = dict(vocab_size=V, hidden_size=48, intermediate_size=64, num_layers=3, num_heads=4,
            num_kv_heads=2)
GEMMA = dict(activation="gelu_tanh", norm_offset=1.0, scale_embeddings=True, post_norms=True)
ROUND_TRIP = {
    "llama": ModelConfig(**BASE, rope_type="llama3", rope_factor=4.0, rope_low_freq_factor=2.0,
                         rope_high_freq_factor=8.0, rope_original_max_positions=128,
                         tie_embeddings=False),
    "qwen3": ModelConfig(**BASE, head_dim=16, qk_norm=True, attention_bias=True,
                         attention_out_bias=True, sliding_window=W,
                         sliding_layers=(False, True, True)),
    "mistral": ModelConfig(**BASE, sliding_window=W, tie_embeddings=False),
    "gemma2": ModelConfig(**BASE, **GEMMA, head_dim=16, query_pre_attn_scalar=12,
                          attn_softcap=2.0, final_softcap=3.0, sliding_window=W,
                          sliding_layers=(True, False, True)),
    "gemma3_text": ModelConfig(**BASE, **GEMMA, qk_norm=True, sliding_window=W,
                               sliding_layers=(True, True, False), rope_theta=1e6,
                               rope_local_theta=50.0, query_pre_attn_scalar=30),
}


@pytest.mark.parametrize("family", list(ROUND_TRIP))
def test_save_hf_loads_in_transformers(tmp_path, family):
    cfg = ROUND_TRIP[family]
    model = _perturbed(cfg, seed=5)
    save_hf(model, _tokenizer(family), tmp_path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, local_files_only=True, attn_implementation="eager")
    assert ref.config.model_type == family
    ids = _tokens(4)
    want = _our_logits(model, ids)
    assert np.abs(_torch_logits(ref.float().eval(), ids) - want).max() <= TOL
    again, _ = load_hf(tmp_path)
    assert again.config == cfg
    np.testing.assert_array_equal(_our_logits(again, ids), want)


@pytest.mark.parametrize("family, switch, off", [
    ("llama", "rope_type", dict(rope_type="default", rope_factor=8.0, rope_low_freq_factor=1.0,
                                rope_high_freq_factor=4.0, rope_original_max_positions=8192)),
    ("qwen3", "qk_norm", dict(qk_norm=False)),
    ("mistral", "sliding_window", dict(sliding_window=None, sliding_layers=None)),
    ("gemma2", "attn_softcap", dict(attn_softcap=None)),
    ("gemma2", "final_softcap", dict(final_softcap=None)),
    ("gemma2", "query_pre_attn_scalar", dict(query_pre_attn_scalar=None)),
    ("gemma2", "sliding_layers", dict(sliding_layers=(True, True, True))),
    ("gemma3_text", "rope_local_theta", dict(rope_local_theta=None)),
    ("gemma3_text", "post_norms", dict(post_norms=False)),
])
def test_each_switch_matters(family, switch, off):
    """Turning one switch off changes the logits on the test inputs (so the
    comparisons above would catch it being ignored)."""
    cfg = ROUND_TRIP[family]
    model = _perturbed(cfg, seed=5)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    other_cfg = cfg.replace(**off)
    keep = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(other_cfg,
                                                                      rngs=nnx.Rngs(0)))))
    pure["layers"] = {k: v for k, v in pure["layers"].items() if k in keep["layers"]}
    other = build_model(other_cfg, pure)
    ids = _tokens(4)
    assert np.abs(_our_logits(model, ids) - _our_logits(other, ids)).max() > 1e-2


@pytest.mark.parametrize("changes, match", [
    (dict(rope_type="yarn"), r"ModelConfig.rope_type='yarn': is not supported; supported: "
     "default, llama3"),
    (dict(rope_factor=2.0), r"rope_factor=2.0: is only used with rope_type='llama3'"),
    (dict(rope_type="llama3", rope_low_freq_factor=4.0), "rope_high_freq_factor"),
    (dict(sliding_window=0), "sliding_window=0: must be None or a positive integer"),
    (dict(sliding_layers=(True, False, True)), "sliding_layers=.*needs sliding_window"),
    (dict(sliding_window=4, sliding_layers=(True,)), r"sliding_layers=\(True,\): must be"),
    (dict(sliding_window=4, sliding_layers=(False,) * 3), "no layer slides"),
    (dict(rope_local_theta=100.0), "rope_local_theta=100.0: applies to sliding layers"),
    (dict(attn_softcap=0.0), "attn_softcap=0.0: must be None or a number > 0"),
    (dict(final_softcap=-1.0), "final_softcap=-1.0"),
    (dict(query_pre_attn_scalar=2.5), "query_pre_attn_scalar=2.5: must be None or a positive"),
    (dict(qk_norm=1), "qk_norm=1: must be a bool"),
    (dict(post_norms="yes"), "post_norms='yes': must be a bool"),
])
def test_bad_model_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**BASE, **changes})


@pytest.mark.parametrize("changes, match", [
    # Qwen3's attention_bias covers o_proj too; q/k/v bias alone has no qk-norm family
    (dict(qk_norm=True, attention_bias=True), r"model_type='qwen3'.*attention_out_bias=False"),
    # Mistral has no biases; Llama no sliding window
    (dict(sliding_window=W, attention_bias=True, attention_out_bias=True),
     r"model_type='mistral'.*attention_bias=True"),
    (dict(final_softcap=3.0), r"model_type='llama'.*final_softcap=3.0"),
])
def test_save_hf_refuses_configs_without_an_hf_equivalent(tmp_path, changes, match):
    model = Decoder(ModelConfig(**{**BASE, **changes}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        save_hf(model, char_tokenizer_hf(), tmp_path)


# Hub-style config.json dicts (legacy keys as the published checkpoints write them;
# sizes shrunk): our reading must agree with transformers' own config classes.
_SIZES = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2)
HUB_CONFIGS = {
    "llama3.1": dict(_SIZES, model_type="llama", num_hidden_layers=2, rope_theta=500000.0,
                     max_position_embeddings=131072,
                     head_dim=128, rope_scaling={
                         "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "gemma3-1b": dict(_SIZES, model_type="gemma3_text", num_hidden_layers=13, head_dim=32,
                      rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling=None,
                      sliding_window=512, sliding_window_pattern=6, query_pre_attn_scalar=32,
                      final_logit_softcapping=None, attn_logit_softcapping=None),
    "gemma2-2b": dict(_SIZES, model_type="gemma2", num_hidden_layers=5, head_dim=32,
                      sliding_window=4096, query_pre_attn_scalar=64,
                      final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                      hidden_activation="gelu_pytorch_tanh"),
    "mistral-7b-v0.3": dict(_SIZES, model_type="mistral", num_hidden_layers=2,
                            rope_theta=1e6, sliding_window=None),
    "mistral-7b-v0.1": dict(_SIZES, model_type="mistral", num_hidden_layers=2,
                            sliding_window=4096),
    "qwen3": dict(_SIZES, model_type="qwen3", num_hidden_layers=4, head_dim=32,
                  rope_theta=1e6, use_sliding_window=False, sliding_window=None,
                  max_window_layers=2),
}


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_config_reads_as_transformers_does(name):
    from jaxrl_lm.models.hf import config_from_hf
    from jaxrl_lm.models.layers import inv_freq

    d = HUB_CONFIGS[name]
    cfg = config_from_hf(d)
    ref = transformers.AutoConfig.for_model(**d)
    window = getattr(ref, "sliding_window", None)
    slides = [t == "sliding_attention" for t in getattr(ref, "layer_types", None)
              or ["sliding_attention"] * ref.num_hidden_layers]
    if window is None or not any(slides):
        assert cfg.sliding_window is None
    else:
        assert cfg.sliding_window == window
        assert list(cfg.sliding_layers) == slides
    # RoPE frequencies: transformers' own initialiser for each layer type
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    kinds = {"full_attention": False, "sliding_attention": True}
    for layer_type, local in kinds.items():
        if local and cfg.rope_local_theta is None:
            continue
        params = ref.rope_parameters.get(layer_type, ref.rope_parameters)
        kw = dict(layer_type=layer_type) if layer_type in ref.rope_parameters else {}
        if params["rope_type"] == "default":
            want = 1.0 / params["rope_theta"] ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
        else:
            want = ROPE_INIT_FUNCTIONS[params["rope_type"]](ref, "cpu", **kw)[0].numpy()
        np.testing.assert_allclose(inv_freq(cfg, local=local), want, rtol=1e-5)
    if name.startswith("gemma"):
        assert cfg.attn_scale == ref.query_pre_attn_scalar ** -0.5
        assert cfg.final_softcap == ref.final_logit_softcapping
        assert cfg.attn_softcap == ref.attn_logit_softcapping
