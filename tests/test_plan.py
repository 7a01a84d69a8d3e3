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
    (["--bogus", "1"], "error: override --bogus: expected the form --section.field"),
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
