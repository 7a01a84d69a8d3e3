"""`jaxrl-lm plan` (jaxrl_lm/plan.py) and the presets for real checkpoints.

- the parameter count equals transformers' own, for tiny Llama / Qwen2 / Gemma 2
  folders it builds and for the six presets' real shapes (config.json only, the
  models built on the meta device: no weights anywhere);
- weights, master copy, optimizer state and gradients per device, by hand;
- a worked activation case (each remat mode, and a tensor split), by hand;
- the fits / does-not-fit verdict and its exit status; bad configs and flags as
  one `error:` line, float16 refused at config time;
- every preset in launch/configs loads with load_config, and plans on 1 and 8
  devices from a config.json-only folder of the real shape.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from jaxrl_lm import cli, plan
from jaxrl_lm.config import load_config
from jaxrl_lm.models.config import ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parents[1]
REASONING = str(ROOT / "launch/configs/reasoning.yaml")
TINY = dict(vocab_size=272, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {"llama": dict(model_type="llama", attention_bias=True, tie_word_embeddings=False),
            "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
            "gemma2": dict(model_type="gemma2", head_dim=24, query_pre_attn_scalar=24,
                           sliding_window=16)}

# config.json of each preset's checkpoint, as published (legacy keys included)
REAL = {
    "qwen2.5-0.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                         hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, max_window_layers=21, rope_theta=1e6,
                         rms_norm_eps=1e-6, sliding_window=32768, use_sliding_window=False,
                         tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16"),
    "qwen2.5-1.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                         hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, max_window_layers=21, rope_theta=1e6,
                         rms_norm_eps=1e-6, sliding_window=32768, use_sliding_window=False,
                         tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16"),
    "qwen3-0.6b": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                       hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936, max_position_embeddings=40960, max_window_layers=28,
                       rope_theta=1000000, rope_scaling=None, rms_norm_eps=1e-6,
                       sliding_window=None, use_sliding_window=False, attention_bias=False,
                       tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16"),
    "qwen3-1.7b": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                       hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       vocab_size=151936, max_position_embeddings=40960, max_window_layers=28,
                       rope_theta=1000000, rope_scaling=None, rms_norm_eps=1e-6,
                       sliding_window=None, use_sliding_window=False, attention_bias=False,
                       tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16"),
    "llama-3.2-1b": dict(model_type="llama", architectures=["LlamaForCausalLM"],
                         hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, attention_bias=False,
                         mlp_bias=False, tie_word_embeddings=True, hidden_act="silu",
                         rope_scaling={"factor": 32.0, "high_freq_factor": 4.0,
                                       "low_freq_factor": 1.0, "rope_type": "llama3",
                                       "original_max_position_embeddings": 8192},
                         torch_dtype="bfloat16"),
    "gemma-2-2b": dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"],
                       hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                       vocab_size=256000, max_position_embeddings=8192,
                       query_pre_attn_scalar=256, sliding_window=4096,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                       rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False,
                       torch_dtype="bfloat16"),
}
PRESETS = sorted(REAL)


def _hf_count(config: dict) -> int:
    """transformers' parameter count of a config.json, built on the meta device."""
    hf = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    return model.num_parameters()


def _folder(tmp_path, name: str, config: dict) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))  # config.json only
    return str(path)


def _plan(config: str, overrides: list[str], devices: int = 1, gib: float = 80.0):
    cfg = load_config(config, overrides)
    return plan.make_plan(cfg, devices=devices, device_memory=(int(gib * 2**30), "test"))


# -- the parameter count ------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_param_count_is_transformers_count(tmp_path, family):
    config = {**TINY, **FAMILIES[family]}
    path = _folder(tmp_path, family, config)
    p = _plan(REASONING, ["--model.source", "hf", "--model.path", path])
    assert p.params == _hf_count(config)


def test_param_count_of_the_real_shapes(tmp_path):
    for name in PRESETS:
        path = _folder(tmp_path, name, REAL[name])
        p = _plan(str(ROOT / f"launch/configs/{name}.yaml"), ["--model.path", path])
        assert p.params == _hf_count(REAL[name]), name
    assert _hf_count(REAL["qwen2.5-0.5b"]) == 494_032_768  # the model card's 0.49B


# -- resident state and gradients by hand -------------------------------------------------
# The embedded default (1,000,576 parameters, D = 128) on fsdp 8: its 1,152 norm
# weights (2 per layer x 4 layers x 128, + 128) stay whole; every other matrix has
# an "embed" dimension of 128, split 8 ways.
PER_DEVICE = (1_000_576 - 1_152) // 8 + 1_152
BF16_MASTER = ["--model.param_dtype", "bfloat16", "--model.master_dtype", "float32",
               "--mesh.data", "1", "--mesh.fsdp", "8"]


def test_weights_master_optimizer_and_gradients_by_hand():
    n = PER_DEVICE
    assert n == 126_080
    p = _plan(REASONING, BF16_MASTER, devices=8)
    assert p.params == 1_000_576
    # adamw on the float32 master: mu and nu, 4 bytes each; two int32 step counts
    # (Adam's and the learning-rate schedule's), replicated
    assert p.resident == {"weights": 2 * n, "master copy": 4 * n, "optimizer": 8 * n + 8}
    assert p.stages["grpo update"]["gradients"] == 4 * n  # float32, one micro-batch
    two = _plan(REASONING, [*BF16_MASTER, "--train.micro_batches", "2"], devices=8)
    assert two.stages["grpo update"]["gradients"] == 2 * 4 * n  # the sum and one more
    assert two.stages["warm-up"]["gradients"] == 4 * n  # the warm-up does not accumulate
    lion = _plan(REASONING, [*BF16_MASTER, "--optim.name", "lion"], devices=8)
    assert lion.resident["optimizer"] == 4 * n + 8  # one moment
    plain = _plan(REASONING, ["--mesh.data", "1", "--mesh.fsdp", "8"], devices=8)
    assert plain.resident == {"weights": 4 * n, "master copy": 0, "optimizer": 8 * n + 8}
    fact = _plan(REASONING, [*BF16_MASTER, "--optim.name", "adafactor"], devices=8)
    assert 0 < fact.resident["optimizer"] < lion.resident["optimizer"]  # factored moments
    beta = _plan(REASONING, [*BF16_MASTER, "--algo.beta", "0.04"], devices=8)
    assert beta.stages["grpo update"]["reference"] == 4 * n  # a copy of the master
    assert beta.stages["rollout"]["reference"] == 4 * n
    assert "reference" not in beta.stages["warm-up"]


# -- activations by hand ------------------------------------------------------------------
def test_worked_activation_case_by_hand():
    cfg = ModelConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=2, dtype="bfloat16")
    r, T = 3, 10  # 3 rows of 10 tokens, a = 2 bytes
    kept = 10 * 2 * (6 * 8 + 3 * 4 * 2 + 3 * 2 * 2 + 4 * 16) + (4 + 2) * 4 * 10 * 10
    back, ends = 8 * 4 * 100, 2 * 10 * 8 * 2
    assert (kept, back, ends) == (5360, 3200, 320)
    assert plan.activation_bytes(cfg, r, T, "none", 1) == 3 * (2 * 5360 + 3200 + 320) == 42720
    full = 10 * 2 * 8  # each block's input
    assert plan.activation_bytes(cfg, r, T, "full", 1) == 3 * (2 * full + 8880) == 27600
    dots = 10 * 2 * (3 * 8 + 4 * 2 + 2 * 2 * 2 + 2 * 16)  # input + projections' outputs
    assert plan.activation_bytes(cfg, r, T, "dots", 1) == 3 * (2 * dots + 8880) == 35280
    # tensor 2 halves the heads (4 -> 2), KV heads (2 -> 1) and MLP (16 -> 8)
    kept2 = 10 * 2 * (6 * 8 + 3 * 2 * 2 + 3 * 1 * 2 + 4 * 8) + 6 * 2 * 100
    assert plan.activation_bytes(cfg, r, T, "none", 2) == 3 * (2 * kept2 + 1600 + 320) == 24720


def test_update_stage_uses_the_rows_on_one_device():
    p = _plan(REASONING, ["--mesh.data", "1", "--mesh.fsdp", "8"], devices=8)
    m = p.model
    # grpo: 64 rows of 32 + 72 tokens, split 8 ways; logits one chunk of 256 positions
    assert p.stages["grpo update"]["activations"] == plan.activation_bytes(m, 8, 104, "none", 1)
    assert p.stages["grpo update"]["logits"] == 3 * 256 * 128 * 4
    # the warm-up's SFT computes all its logits: 32 rows / 8 x 103 positions
    assert p.stages["warm-up"]["logits"] == 3 * 4 * 103 * 128 * 4
    # the rollout: 64 sequences / 8, 104 tokens -> 128 cache slots, float32
    assert p.stages["rollout"]["kv cache"] == 8 * 4 * 2 * 2 * 128 * 32 * 4 + \
        8 * (2 * 4 * 32 * 2 * 32 * 4 + 4 * 4 * 32 ** 2)


# -- the command ------------------------------------------------------------------------
def test_fits_and_does_not_fit(capsys):
    assert cli.main(["plan", "--config", REASONING, "--devices", "8", "--mesh.data", "8",
                     "--memory-gib", "16"]) == 0
    out = capsys.readouterr().out
    assert "mesh: data=8 fsdp=1 tensor=1 (8 devices); device memory 16.0 GiB" in out
    assert "\nfits: the largest stage (grpo update) needs " in out
    assert cli.main(["plan", "--config", REASONING, "--devices", "1",
                     "--memory-gib", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit: the largest stage (grpo update) needs " in out
    assert "of 10.2 MiB" in out and "to fit: more devices or mesh.fsdp" in out
    assert cli.main(["plan", "--config", REASONING, "--devices", "1", "--json"]) in (0, 1)
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 1_000_576 and set(data["stages"]) == {"grpo update", "rollout",
                                                                    "warm-up"}


@pytest.mark.parametrize("argv, match", [
    (["--optim.name", "sgd"], "error: optim.name='sgd': must be one of adamw, adafactor, lion"),
    (["--model.dtype", "float16"], "error: model.dtype='float16': must be one of float32, "
                                   "bfloat16"),
    (["--model.source", "hf", "--model.path", "/no/such/folder"],
     "error: model.path='/no/such/folder': path='/no/such/folder' is not a directory"),
    (["--devices", "3"], "error: train.batch_size/train.micro_batches=64 must be divisible by "
                         "mesh.data*mesh.fsdp=3"),
    (["--devices", "8", "--mesh.fsdp", "3"], "error: mesh {'data': -1, 'fsdp': 3, 'tensor': 1}:"
                                             " the fixed sizes (product 3) do not divide"),
    (["--devices", "0"], "error: --devices=0: must be >= 1"),
    (["--memory-gib", "-1"], "error: --memory-gib=-1.0: must be a finite number > 0"),
    (["--memory-gib", "inf"], "error: --memory-gib=inf: must be a finite number > 0"),
    (["--bogus", "1"], "error: override --bogus: expected the form --section.field[.key ...]"),
])
def test_bad_configs_are_one_error_line(capsys, argv, match):
    assert cli.main(["plan", "--config", REASONING, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(match) and err.count("\n") == 1, err


# -- the presets ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_plans_on_its_real_shape(tmp_path, name):
    config = str(ROOT / f"launch/configs/{name}.yaml")
    cfg = load_config(config)  # model.path need not exist for load_config
    m = cfg.model
    assert (m.source, m.dtype, m.param_dtype, m.master_dtype, m.remat) == \
        ("hf", "bfloat16", "bfloat16", "float32", "full")
    assert m.path.startswith("checkpoints/") and not pathlib.Path(ROOT / m.path).exists()
    assert cfg.algo.name == "grpo" and cfg.data.path == "data/addition.jsonl"
    assert cfg.mesh.shape == (1, -1, 1)
    path = _folder(tmp_path, name, REAL[name])
    for devices in (1, 8):
        p = _plan(config, ["--model.path", path], devices=devices, gib=60)
        assert p.mesh == {"data": 1, "fsdp": devices, "tensor": 1}
        assert p.fits, plan.format_plan(p)  # a full fine-tune fits one 80 GB GPU's 60 GiB


# -- LoRA -----------------------------------------------------------------------------------
# The embedded default (D 128, F 512, L 4, H 4, K 2, Hd 32) with rank-4 adapters on all
# 7 projections: L x r x (in + out) per target, by hand:
#   q 128 -> 4 x 32 = 128: 4 x (128 + 128) = 1,024    k, v 128 -> 2 x 32 = 64: 4 x 192 = 768 each
#   o 128 -> 128: 1,024    gate, up 128 -> 512, down 512 -> 128: 4 x 640 = 2,560 each
#   per layer 1,024 + 2 x 768 + 1,024 + 3 x 2,560 = 11,264; x 4 layers = 45,056
ADAPTERS = 45_056
LORA4 = ["--lora.rank", "4", "--lora.alpha", "8", "--model.param_dtype", "bfloat16"]


def test_lora_trains_and_counts_only_the_adapters_by_hand(capsys):
    from jaxrl_lm.models import lora

    assert lora.adapter_count(plan.model_config(load_config(REASONING)), 4) == ADAPTERS
    p = _plan(REASONING, LORA4)
    assert (p.params, p.trained) == (1_000_576, ADAPTERS)  # the base counted once
    # the bfloat16 base, float32 adapters; adamw's two float32 moments of the adapters
    # and its two int32 step counts; no master copy (the adapters are float32)
    assert p.resident == {"weights": 2 * 1_000_576 + 4 * ADAPTERS, "master copy": 0,
                          "optimizer": 8 * ADAPTERS + 8}
    assert p.stages["grpo update"]["gradients"] == 4 * ADAPTERS
    assert p.stages["warm-up"]["gradients"] == 4 * ADAPTERS
    # a master_dtype changes nothing (float32 adapters), and the KL reference is the base
    kl = _plan(REASONING, [*LORA4, "--model.master_dtype", "float32", "--algo.beta", "0.04"])
    assert kl.resident == p.resident and "reference" not in kl.stages["grpo update"]
    assert kl.stages["rollout"]["sampling"] == p.stages["rollout"]["sampling"]  # no cast
    full = _plan(REASONING, ["--model.param_dtype", "bfloat16"])
    assert full.resident["optimizer"] == 2 * 2 * 1_000_576 + 8  # bf16 moments of every param
    # the update stage's difference: bf16 moments and gradients of every param (3 x 2N
    # bytes) less the adapters' float32 weights, moments and gradients (4 x 4A bytes)
    assert full.total("grpo update") - p.total("grpo update") == \
        6 * 1_000_576 - 16 * ADAPTERS
    assert cli.main(["plan", "--config", REASONING, "--devices", "1", *LORA4]) == 0
    assert ("lora: rank 4, alpha 8 on q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
            "down_proj: 45,056 trained parameters, the base frozen") in capsys.readouterr().out


def test_lora_adapters_are_split_like_their_weights_by_hand():
    """fsdp 8 splits "embed" (128 -> 16): A of q, k, v, gate, up [L, D, r] and B of o,
    down [L, r, D]; A of o [L, H, Hd, r], A of down [L, F, r] and B of q, k, v,
    gate, up (heads / mlp, split by tensor only) stay whole. Per layer, r = 4:
      split:  5 x 128 x 4 / 8 + 2 x 4 x 128 / 8 = 320 + 128 = 448
      whole:  128 x 4 + 512 x 4 + 4 x (128 + 64 + 64 + 512 + 512) = 2,560 + 5,120 = 7,680"""
    per_device = 4 * (448 + 7_680)
    assert per_device == 32_512
    p = _plan(REASONING, [*LORA4, "--mesh.data", "1", "--mesh.fsdp", "8"], devices=8)
    assert p.stages["grpo update"]["gradients"] == 4 * per_device
    assert p.resident["weights"] == 2 * PER_DEVICE + 4 * per_device


def test_memory_check_counts_the_adapters_only():
    from jaxrl_lm import memory_check

    cfg = load_config(REASONING, LORA4)
    mcfg = plan.model_config(cfg)
    p = memory_check.param_count(mcfg)  # matrices only: 1,000,576 less 9 norms of 128
    assert p == 999_424
    assert memory_check.state_bytes(mcfg, "adamw", cfg.lora) == {
        "weights": 2 * p + 4 * ADAPTERS, "gradients": 4 * ADAPTERS, "optimizer": 8 * ADAPTERS}
    assert memory_check.state_bytes(mcfg, "lion", cfg.lora)["optimizer"] == 4 * ADAPTERS
    off = load_config(REASONING, ["--model.param_dtype", "bfloat16"])
    assert memory_check.state_bytes(mcfg, "adamw", off.lora) == {
        "weights": 2 * p, "gradients": 2 * p, "optimizer": 4 * p}
    # the check itself: the LoRA run needs less by the state it does not hold
    full_need = memory_check.check_memory(off, mcfg, available=(2**40, "test"))
    lora_need = memory_check.check_memory(cfg, mcfg, available=(2**40, "test"))
    assert full_need - lora_need == (2 * p + 4 * p) - (4 * ADAPTERS + 8 * ADAPTERS + 4 * ADAPTERS)



@pytest.mark.parametrize("name", PRESETS)
def test_lora_preset_is_its_full_preset_with_adapters(tmp_path, name):
    full_cfg = load_config(str(ROOT / f"launch/configs/{name}.yaml"))
    config = str(ROOT / f"launch/configs/{name}-lora.yaml")
    cfg = load_config(config)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 32.0, 0.0)
    assert cfg.lora.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj")
    m = cfg.model
    assert (m.dtype, m.param_dtype, m.master_dtype, m.remat) == ("bfloat16", "bfloat16", None,
                                                                  "full")
    # the same task, model and sampling; only LoRA, the master copy and the step size differ
    same = ("env", "rollout", "data", "train", "algo", "mesh", "shaping", "eval", "warmup")
    for section in same:
        assert getattr(cfg, section) == getattr(full_cfg, section), section
    assert m.path == full_cfg.model.path and (cfg.optim.lr, full_cfg.optim.lr) == (1e-5, 1e-6)
    path = _folder(tmp_path, name, REAL[name])
    for devices in (1, 8):
        p = _plan(config, ["--model.path", path], devices=devices, gib=60)
        full = _plan(str(ROOT / f"launch/configs/{name}.yaml"), ["--model.path", path],
                     devices=devices, gib=60)
        assert p.fits and p.params == full.params
        assert p.peak[1] < full.peak[1]
        if devices == 1:  # adamw: two float32 moments of the adapters, two int32 counts
            assert p.resident["optimizer"] == 8 * p.trained + 8
            assert p.stages["grpo update"]["gradients"] == 4 * p.trained
    if name == "qwen2.5-0.5b":  # by hand: D 896, F 4864, 14 x 64 query, 2 x 64 KV, L 24
        per_layer = (896 + 896) + 2 * (896 + 128) + (896 + 896) + 3 * (896 + 4864)
        assert per_layer == 22_912
        assert p.trained == 24 * 16 * per_layer == 8_798_208
