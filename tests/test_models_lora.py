"""LoRA (models/lora.py): parity with PEFT and with the merged HF folder for a
tiny Llama and Qwen2 built by transformers, an exact start from the base,
config errors, training of the adapters only (gradients, optimizer state,
checkpoints; the frozen base sharded), and a GRPO run whose KL reference is
the base model itself."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from jaxrl_lm.algorithms import common  # noqa: E402
from jaxrl_lm.cli import main as cli_main  # noqa: E402
from jaxrl_lm.config import ConfigError, OptimSection, load_config  # noqa: E402
from jaxrl_lm.models import lora  # noqa: E402
from jaxrl_lm.models.default import default_policy  # noqa: E402
from jaxrl_lm.models.hf import load_hf  # noqa: E402
from jaxrl_lm.train import mesh as mesh_lib  # noqa: E402
from jaxrl_lm.train.engine import Engine  # noqa: E402
from jaxrl_lm.train.optim import make_optimizer  # noqa: E402
from jaxrl_lm.train.rl import RLRunner  # noqa: E402
from jaxrl_lm.train.sft import sft_loss  # noqa: E402
from jaxrl_lm.train.trainer import build_policy, export_hf  # noqa: E402
from tests.test_hf import (_hf_model, _our_logits, _tokenizer, _tokens,  # noqa: E402
                           _torch_logits, write_hf_folders)

TOL = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "launch", "configs", "tictactoe.yaml")
BASE_ONLY = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
# family -> (rank, alpha, targets): every projection on Llama, a subset on Qwen2
ADAPTERS = {"llama": (4, 8.0, lora.TARGETS),
            "qwen2": (3, 5.0, ("q_proj", "v_proj", "o_proj", "down_proj"))}


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    return write_hf_folders(tmp_path_factory, list(ADAPTERS), _hf_model, _tokenizer)


def _randomize_adapters(model, seed: int, std: float = 0.1) -> None:
    """Non-zero B (and a fresh A), so the adapters change the logits."""
    rng = np.random.default_rng(seed)
    adapters = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype), adapters))


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_export_matches_peft_and_the_merged_folder(hf_folders, tmp_path, family):
    """export_hf writes the merged weights (transformers loads them) and a PEFT
    adapter folder (PeftModel applies it to the HF base); both give our logits."""
    path, _ = hf_folders[family]
    rank, alpha, targets = ADAPTERS[family]
    model, tok = load_hf(path)
    ids = _tokens(5)
    base_logits = _our_logits(model, ids)
    lora.apply_lora(model, rank=rank, alpha=alpha, targets=targets, seed=1, base_path=str(path))
    _randomize_adapters(model, seed=2)
    ours = _our_logits(model, ids)
    assert np.abs(ours - base_logits).max() > 1e3 * TOL  # the adapters matter here
    export_hf(nnx.state(model, lora.trainable_filter(model)), model, tok, str(tmp_path / "hf"))

    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (rank, alpha, list(targets))
    base = transformers.AutoModelForCausalLM.from_pretrained(path).float().eval()
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    n_lora = sum("lora_A" in n for n, _ in peft_model.named_parameters())
    assert n_lora == len(targets) * model.config.num_layers  # every adapter was loaded
    got = _torch_logits(peft_model, ids)
    assert np.abs(got - ours).max() <= TOL, np.abs(got - ours).max()

    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").float().eval()
    got = _torch_logits(merged, ids)
    assert np.abs(got - ours).max() <= TOL, np.abs(got - ours).max()


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_the_adapted_model_starts_equal_to_its_base(param_dtype):
    """B = 0: the logits are bit-identical to the base's, and so are those of the
    base view with the adapters off once B is not zero."""
    model, _ = default_policy(0, param_dtype=param_dtype)
    ids = _tokens(0, (2, 11), vocab=model.config.vocab_size)
    want = _our_logits(model, ids)
    lora.apply_lora(model, rank=4, alpha=16.0, seed=3)
    np.testing.assert_array_equal(_our_logits(model, ids), want)
    _randomize_adapters(model, seed=4)
    assert np.abs(_our_logits(model, ids) - want).max() > 1e-2
    np.testing.assert_array_equal(_our_logits(lora.without_adapters(model), ids), want)
    # the base view shares the arrays: no second copy of the weights
    base_view = nnx.state(lora.without_adapters(model), BASE_ONLY)
    for a, b in zip(jax.tree.leaves(base_view), jax.tree.leaves(nnx.state(model, BASE_ONLY))):
        assert a is b


@pytest.mark.parametrize("overrides,message", [
    (["--lora.rank", "-1"], "lora.rank=-1: must be >= 0"),
    (["--lora.rank", "4", "--lora.alpha", "0"], "lora.alpha=0.0: must be > 0"),
    (["--lora.rank", "4", "--lora.alpha", ".nan"], "lora.alpha=nan"),
    (["--lora.rank", "4", "--lora.targets", "[q_proj, qkv]"],
     "'qkv' is not a projection; allowed: q_proj, k_proj, v_proj, o_proj, gate_proj"),
    (["--lora.rank", "4", "--lora.targets", "[]"], "lora.targets=[]: is empty"),
    (["--lora.targets", "[q_proj]"], "lora.rank=0: must be >= 1 when lora.targets is set"),
    (["--lora.rank", "4", "--lora.dropout", "0.1"], "lora.dropout=0.1: only 0 is supported"),
])
def test_bad_lora_config_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, overrides)
    assert message in str(e.value), str(e.value)


def test_a_rank_the_shapes_do_not_allow_is_a_config_error(tmp_path, capsys):
    # the default policy's k_proj maps 128 -> 2 heads x 32 = 64 features
    cfg = load_config(PRESET, ["--lora.rank", "65", "--lora.targets", "[q_proj, k_proj]"])
    with pytest.raises(ConfigError, match=r"lora.rank=65: must be <= min\(in, out\) = 64 "
                                          r"for k_proj \(128 -> 64 features\)"):
        build_policy(cfg)
    # the CLI stops before anything compiles
    assert cli_main(["train", "--config", PRESET, "--out", str(tmp_path / "run"),
                     "--lora.rank", "1000"]) == 2
    assert "error: lora.rank=1000: must be <= min(in, out)" in capsys.readouterr().err


def _sft_batch(vocab: int, seed: int = 0, b: int = 8, t: int = 12) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t), np.float32)
    mask[:, t // 2:] = 1.0
    return {"tokens": rng.integers(0, vocab, (b, t)).astype(np.int32), "loss_mask": mask}


def _lora_engine(mesh_shape=(-1, 1, 1), *, param_dtype="float32", master=None, lr=1e-2,
                 eps=1e-8, targets=("q_proj", "v_proj")):
    model, _ = default_policy(0, param_dtype=param_dtype)
    model.config = model.config.replace(master_dtype=master)
    lora.apply_lora(model, rank=2, alpha=4.0, targets=targets, seed=0)
    opt, sched = make_optimizer(OptimSection(lr=lr, eps=eps, warmup_steps=0,
                                             schedule="constant"), 10)
    return model, Engine(model, sft_loss, opt, sched, mesh_lib.make_mesh(mesh_shape))


def _names(state) -> list[str]:
    return sorted("/".join(map(str, k)) for k, _ in nnx.to_flat_state(state))


def test_only_the_adapters_get_gradients_and_optimizer_state():
    model, engine = _lora_engine()
    base = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, BASE_ONLY)))
    state = engine.init_state(0)
    want = ["layers/q_proj_lora_a", "layers/q_proj_lora_b", "layers/v_proj_lora_a",
            "layers/v_proj_lora_b"]
    assert _names(state.params) == want
    n_adapter = sum(x.size for x in jax.tree.leaves(state.params))
    assert n_adapter == 4 * (128 * 2 + 2 * 4 * 32) + 4 * (128 * 2 + 2 * 2 * 32)
    # Adam: a first and a second moment per adapter array, and a step count
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * len(want)
    assert sum(x.size for x in moments) == 2 * n_adapter
    batch = engine.place_batch(_sft_batch(model.config.vocab_size))
    new, metrics = engine.step(state, batch)
    assert float(metrics["finite"]) == 1.0 and float(metrics["grad_norm"]) > 0
    for name in ("q_proj_lora_b", "v_proj_lora_b"):  # B moved off zero
        assert np.abs(np.asarray(new.params["layers"][name][...])).max() > 0
    # the frozen base is what the engine holds, unchanged
    rest = jax.tree.map(np.asarray, nnx.to_pure_dict(engine.rest))
    for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_guard_and_the_master_copy_cover_the_adapters():
    """bfloat16 base with a float32 master: the state holds float32 adapters
    only and the base stays bfloat16; a NaN loss leaves the adapters as they were."""
    model, engine = _lora_engine(param_dtype="bfloat16", master="float32")
    state = engine.init_state(0)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(engine.rest)} == {jnp.dtype("bfloat16")}
    batch = _sft_batch(model.config.vocab_size)
    state, _ = engine.step(state, engine.place_batch(batch))
    before = jax.tree.map(np.asarray, state.params)
    bad = dict(batch, loss_mask=np.where(batch["loss_mask"] > 0, np.nan, 0.0).astype(np.float32))
    state, metrics = engine.step(state, engine.place_batch(bad))
    assert float(metrics["finite"]) == 0.0 and int(metrics["skipped"]) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_lora_on_a_tensor_parallel_mesh_matches_one_device():
    """The frozen base is sharded by the rule table (heads over tensor, embed over
    fsdp), the adapters too, and a step gives what the data-parallel one gives.
    Adam's eps far above the gradients makes its step linear in them (as in
    test_train_rl): with 1e-8 a near-zero gradient entry turns summation-order
    rounding into a visible step."""
    targets = ("q_proj", "o_proj", "down_proj")
    out = []
    for shape in ((-1, 1, 1), (2, 2, 2)):
        model, engine = _lora_engine(shape, targets=targets, lr=1.0, eps=1.0)
        state = engine.init_state(0)
        state, metrics = engine.step(state, engine.place_batch(_sft_batch(128)))
        out.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.params)))
    q = engine.rest["layers"]["q_proj"][...]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert state.params["layers"]["q_proj_lora_b"][...].sharding.spec == \
        P(None, None, "tensor", None)
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    assert np.abs(out[0][1]["layers"]["q_proj_lora_b"][...]).max() > 1e-3  # B moved
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_value_head_is_trained_with_the_adapters():
    """PPO's value head is fresh: it trains alongside the adapters; the base does not."""
    model, _ = default_policy(0, value_head=True)
    assert lora.trainable_filter(model) is nnx.Param  # no adapters: everything trains
    lora.apply_lora(model, rank=2, alpha=2.0, targets=("v_proj",))
    assert _names(nnx.state(model, lora.trainable_filter(model))) == [
        "layers/v_proj_lora_a", "layers/v_proj_lora_b", "value_head/bias", "value_head/kernel"]


def _dir_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.slow
def test_grpo_with_lora_trains_the_adapters_against_the_base(tmp_path):
    """Two GRPO iterations (KL in the loss) on the embedded default: only the
    adapters change, the checkpoints hold them (not the base), every KL
    reference log-prob is the base model's own, and the export holds the policy."""
    cfg = load_config(PRESET, [
        "--lora.rank", "4", "--lora.alpha", "8", "--train.batch_size", "8", "--eval.episodes", "8",
        "--algo.group_size", "4", "--optim.warmup_steps", "0", "--optim.lr", "0.05",
        "--train.progress", "false", "--rollout.max_new_tokens", "6", "--env.max_turns", "4",
        "--train.micro_batches", "2", "--train.steps", "2", "--train.ckpt_every", "1",
        "--trust_region.max_update_move", "0"])
    assert cfg.algo.beta > 0 and cfg.algo.kl_in == "loss"
    model, tok = build_policy(cfg)
    base_model, _ = default_policy(cfg.train.seed)  # what build_policy adapted
    base = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(base_model, nnx.Param)))
    runner = RLRunner(cfg, model, tok)
    state, ref_params = runner.init()
    assert ref_params is None  # no copy: the reference is the base itself
    result = runner.train(str(tmp_path / "run"))
    state = result.state
    assert all("_lora_" in n for n in _names(state.params))
    assert np.abs(np.asarray(state.params["layers"]["q_proj_lora_b"][...])).max() > 0
    rest = jax.tree.map(np.asarray, nnx.to_pure_dict(runner.engine.rest))
    for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(a, b)
    # each checkpoint holds the adapters and their two Adam moments (3 x 180 KB, ~1 MB
    # with Orbax's metadata), not the 4.0 MB base (a full fine-tune's: 3 x 4.0 MB)
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(base))
    for step in ("1", "2"):
        size = _dir_bytes(tmp_path / "run" / "checkpoints" / step)
        assert 0 < size < base_bytes / 2, (size, base_bytes)

    # one more iteration by hand: its reference log-probs are the base model's
    state, batch, _, _ = runner.iteration(state, ref_params, cfg.train.steps)
    score = jax.jit(lambda graphdef, params, b: common.ref_logprobs(
        nnx.merge(graphdef, params), b, chunks=cfg.train.micro_batches,
        temperature=cfg.rollout.temperature), static_argnums=0)
    want = np.asarray(score(*nnx.split(base_model), batch))
    mask = np.asarray(batch["loss_mask"]) > 0
    ref = np.asarray(batch["ref_logp"])
    np.testing.assert_allclose(ref[mask], want[mask], rtol=0, atol=1e-6)
    nnx.update(model, state.params)
    policy = np.asarray(score(*nnx.split(model), batch))
    assert np.abs(policy - want)[mask].max() > 1e-3  # the policy itself has moved

    export_hf(state.params, model, tok, str(tmp_path / "run" / "hf"))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    merged, _ = load_hf(tmp_path / "run" / "hf")
    ids = _tokens(1, (2, 9), vocab=model.config.vocab_size)
    np.testing.assert_allclose(_our_logits(merged, ids), _our_logits(model, ids),
                               rtol=0, atol=1e-5)
