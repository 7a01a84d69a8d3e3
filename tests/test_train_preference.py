"""Preference training (jaxrl_lm.train.preference): the pair losses through the
trainer against a hand-worked case, float64 numpy and TRL's DPOTrainer on the
same log-probs; reference log-probs against a direct forward; the config
rules; bad data stops the CLI before compiling; a tiny DPO run that learns;
a SIGKILLed run that resumes bit-identical."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm import algorithms
from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import ConfigError, field_help, from_dict
from jaxrl_lm.config_preference import PreferenceSection
from jaxrl_lm.data.preference import build_pairs
from jaxrl_lm.models import default_policy
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train import preference as P
from jaxrl_lm.train.engine import combine_metrics
from jaxrl_lm.train.logging import is_timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one-digit sums: the chosen answer is right, the rejected one is off by 1-3
ROWS = [{"prompt": f"{a}+{b}=?", "chosen": str((a + b) % 10),
         "rejected": str((a + b + 1 + (a * b) % 3) % 10)} for a in range(6) for b in range(6)]
MULTI = {"prompt": [{"role": "user", "content": "Guess 1-8."}],
         "chosen": [{"role": "assistant", "content": "4"}, {"role": "user", "content": "up"},
                    {"role": "assistant", "content": "6"}],
         "rejected": [{"role": "assistant", "content": "1"}, {"role": "user", "content": "up"},
                      {"role": "assistant", "content": "2"}]}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def logsig(x):
    return -np.logaddexp(0.0, -x)


def numpy_loss(name, w, l, rw, rl, nw, nl, *, beta, eps=0.0, gamma=0.5, alpha=1.0):
    """float64 per-pair losses and implicit rewards, from the papers' formulas."""
    if name == "simpo":
        cw, cl = beta * w / nw, beta * l / nl
        return -(1 - eps) * logsig(cw - cl - gamma) - eps * logsig(gamma - cw + cl), cw, cl
    if name == "ipo":
        w, l, rw, rl = w / nw, l / nl, rw / nw, rl / nl
    h = (w - rw) - (l - rl)
    z = beta * h
    per = {"dpo": -(1 - eps) * logsig(z) - eps * logsig(-z),
           "rpo": -(1 - eps) * logsig(z) - eps * logsig(-z) - alpha * w / nw,
           "robust": (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps),
           "hinge": np.maximum(0.0, 1 - z),
           "ipo": (h - 1 / (2 * beta)) ** 2}[name]
    return per, beta * (w - rw), beta * (l - rl)


def run_loss(name, pref, logp, n, ref):
    (s, c), m = P.pair_loss_metrics(algorithms.get(name), pref, jnp.asarray(logp, jnp.float32),
                                    jnp.asarray(n, jnp.float32),
                                    None if ref is None else jnp.asarray(ref, jnp.float32))
    return float(s / c), {k: float(v) for k, v in m.items()}


def test_a_worked_dpo_pair_by_hand():
    """log pi(w) = -3, log pi(l) = -5, both -4 under the reference, beta 0.1:
    h = 1 - (-1) = 2, loss = log(1 + e^-0.2)."""
    loss, m = run_loss("dpo", PreferenceSection(), [[-3.0, -5.0]], [[2.0, 4.0]], [[-4.0, -4.0]])
    assert loss == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-6)  # 0.59814
    assert m["rewards_chosen"] == pytest.approx(0.1, rel=1e-6)
    assert m["rewards_rejected"] == pytest.approx(-0.1, rel=1e-6)
    assert m["reward_margin"] == pytest.approx(0.2, rel=1e-6) and m["reward_accuracy"] == 1.0
    assert m["logps_chosen"] == -3.0 and m["logps_rejected"] == -5.0
    assert m["nll_chosen"] == pytest.approx(1.5)  # 3 nats over 2 tokens
    # rpo adds alpha times that NLL; ipo squares (h/|y| terms - 1/(2 beta)) = (-0.25 + 0.25 - 5)^2
    assert run_loss("rpo", PreferenceSection(), [[-3.0, -5.0]], [[2.0, 4.0]], [[-4.0, -4.0]])[0] \
        == pytest.approx(math.log1p(math.exp(-0.2)) + 1.5, rel=1e-6)
    assert run_loss("ipo", PreferenceSection(), [[-3.0, -5.0]], [[2.0, 4.0]], [[-4.0, -4.0]])[0] \
        == pytest.approx((0.5 + 0.25 - 5.0) ** 2, rel=1e-6)


@pytest.mark.parametrize("name, opts", [
    ("dpo", {}), ("dpo", {"label_smoothing": 0.1}), ("ipo", {"beta": 0.5}), ("hinge", {}),
    ("robust", {"label_smoothing": 0.2}), ("simpo", {"beta": 2.0, "gamma": 0.3}),
    ("rpo", {"alpha": 0.5}), ("dpo", {"length_normalize": True}),
])
def test_losses_through_the_trainer_match_float64_numpy(name, opts):
    rng = np.random.default_rng(7)
    n = rng.integers(1, 9, (16, 2)).astype(np.float64)
    logp = -rng.uniform(0.5, 3.0, (16, 2)) * n
    ref = logp + rng.normal(0.0, 1.5, (16, 2))  # some pairs won, some lost
    pref = PreferenceSection(**opts)
    got, m = run_loss(name, pref, logp, n, None if name == "simpo" else ref)
    w, l, rw, rl, nw, nl = logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], n[:, 0], n[:, 1]
    if opts.get("length_normalize"):  # the dpo loss on per-token log-ratios
        w, l, rw, rl = w / nw, l / nl, rw / nw, rl / nl
        nw = nl = np.ones_like(nw)
    per, cw, cl = numpy_loss(name, w, l, rw, rl, nw, nl, beta=pref.beta,
                             eps=pref.label_smoothing, gamma=pref.gamma, alpha=pref.alpha)
    assert 0.0 < (cw > cl).mean() < 1.0
    np.testing.assert_allclose(got, per.mean(), rtol=1e-5)
    np.testing.assert_allclose([m["rewards_chosen"], m["rewards_rejected"], m["reward_margin"]],
                               [cw.mean(), cl.mean(), (cw - cl).mean()], rtol=1e-5, atol=1e-6)
    assert m["reward_accuracy"] == (cw > cl).mean()
    want = [logp[:, 0].mean(), logp[:, 1].mean(), (-logp[:, 0] / n[:, 0]).mean()]
    np.testing.assert_allclose([m["logps_chosen"], m["logps_rejected"], m["nll_chosen"]], want,
                               rtol=1e-5)


@pytest.fixture(scope="module")
def policy():
    return default_policy(0)


@pytest.fixture(scope="module")
def pairs(policy):
    return build_pairs(ROWS[:6] + [MULTI], policy[1], max_len=64)


def direct_logps(model, pairs):
    """f64 [N, 2, L] per-token log-probs of every pair's sequences (masked):
    the model's plain forward (logits), log-softmax in float64 numpy."""
    n, _, length = pairs.tokens.shape
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda st, t, p: nnx.merge(graphdef, st)(t, p))
    tokens = pairs.tokens.reshape(2 * n, length)
    z = np.asarray(forward(state, tokens, np.broadcast_to(np.arange(length), tokens.shape)),
                   np.float64)
    lp = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
    out = np.zeros((2 * n, length))
    out[:, 1:] = np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    return out.reshape(n, 2, length) * pairs.mask


@pytest.fixture(scope="module")
def logps(policy, pairs):
    """Direct per-token log-probs under the policy and under a second model (the reference)."""
    return {"policy": direct_logps(policy[0], pairs),
            "ref": direct_logps(default_policy(1)[0], pairs)}


def test_reference_logps_equal_a_direct_forward(policy, pairs, logps):
    """The scorer's batches (sharded over a (2, 2, 2) mesh, the last one wrapping
    around) give every pair's summed log-probs as a plain forward does."""
    model, _ = policy
    scorer = P.PairScorer(model, mesh_lib.make_mesh((2, 2, 2)), batch=4)
    got = scorer(scorer.module_params(model), pairs)
    want = logps["policy"].sum(-1)
    assert got.shape == (7, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_reference_from_an_hf_folder(tmp_path, policy, pairs):
    from jaxrl_lm.models import save_hf
    from jaxrl_lm.models.tokenizer import char_tokenizer_hf

    other, tok = default_policy(3)
    save_hf(other, tok, str(tmp_path / "ref"))
    cfg = from_dict({"algo": {"name": "dpo"}, "data": {"path": "x.jsonl"},
                     "preference": {"reference": str(tmp_path / "ref")}})
    ref = P.reference_model(cfg, policy[0], policy[1])
    scorer = P.PairScorer(ref, mesh_lib.make_mesh((-1, 1, 1)), batch=8)
    np.testing.assert_allclose(scorer(scorer.module_params(ref), pairs),
                               direct_logps(other, pairs).sum(-1), rtol=1e-5)
    assert P.reference_model(from_dict({"algo": {"name": "dpo"}, "data": {"path": "x"}}),
                             policy[0], policy[1]) is policy[0]
    bigger = char_tokenizer_hf()
    bigger.add_special_tokens({"additional_special_tokens": ["<|x|>"]})
    save_hf(other, bigger, str(tmp_path / "other_tok"))
    bad = from_dict({"algo": {"name": "dpo"}, "data": {"path": "x"},
                     "preference": {"reference": str(tmp_path / "other_tok")}})
    with pytest.raises(ValueError, match="its tokenizer differs from the policy's"):
        P.reference_model(bad, policy[0], policy[1])


def trl_loss(tok_logp, mask, ref, *, loss_types, weights, beta, label_smoothing=0.0):
    """TRL's DPOTrainer._compute_loss on given per-token log-probs [2, L] of one
    pair (chosen row first): the model is a stub returning them, the reference
    log-probs are given as precomputed, as TRL's precompute_ref_log_probs does."""
    import collections
    import types

    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    def zeros(dtype):
        return torch.zeros(2, tok_logp.shape[1] - 1, dtype=dtype)

    out = types.SimpleNamespace(log_probs=torch.tensor(tok_logp[:, 1:]),
                                entropy=zeros(torch.float64), mean_logits=zeros(torch.float64),
                                is_top1=zeros(torch.bool))
    me = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), aux_loss_enabled=False, ld_alpha=None,
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x,
                                          gather=lambda x: x),
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
        loss_weights=weights, beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(mask.shape, dtype=torch.long),
              "attention_mask": torch.ones(mask.shape, dtype=torch.long),
              "completion_mask": torch.tensor(mask, dtype=torch.long),
              "ref_chosen_logps": torch.tensor(ref[:1]),
              "ref_rejected_logps": torch.tensor(ref[1:])}
    loss = DPOTrainer._compute_loss(me, lambda **kw: out, inputs, False)
    return float(loss), {k: v[0] for k, v in me._metrics["train"].items()}


@pytest.mark.parametrize("name, trl_types, opts", [
    ("dpo", (["sigmoid"], [1.0]), {}),
    ("hinge", (["hinge"], [1.0]), {"beta": 0.5}),
    ("ipo", (["ipo"], [1.0]), {"beta": 0.5}),
    ("robust", (["robust"], [1.0]), {"label_smoothing": 0.2}),
    ("rpo", (["sigmoid", "sft"], [1.0, 0.7]), {"alpha": 0.7}),
])
def test_per_pair_losses_equal_trls_dpo_trainer(pairs, logps, name, trl_types, opts):
    """The policy's and a second model's (the reference's) real per-token
    log-probs, multi-turn pair included; TRL's loss pair by pair (its sft term,
    a token mean over the batch, is RPO's length-normalised NLL for one pair)."""
    pytest.importorskip("trl")
    tok_logp, ref = logps["policy"], logps["ref"].sum(-1)
    pref = PreferenceSection(**opts)
    for r in range(len(pairs)):
        got, m = run_loss(name, pref, tok_logp[r:r + 1].sum(-1), pairs.mask[r:r + 1].sum(-1),
                          ref[r:r + 1])
        want, tm = trl_loss(tok_logp[r], pairs.mask[r], ref[r], loss_types=trl_types[0],
                            weights=trl_types[1], beta=pref.beta,
                            label_smoothing=pref.label_smoothing)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), r
        assert m["logps_chosen"] == pytest.approx(tm["logps/chosen"], rel=1e-5)
        if name != "ipo":  # TRL reports ipo's rewards unnormalised, we the normalised ones
            assert m["reward_margin"] == pytest.approx(tm["rewards/margins"], rel=1e-4, abs=1e-6)
            assert m["reward_accuracy"] == tm["rewards/accuracies"]


@pytest.mark.parametrize("name", ["rpo", "simpo"])
def test_micro_batches_add_up_to_the_whole_batch(policy, pairs, logps, name):
    """The training loss on the model's own log-probs is the float64 one (simpo
    without any reference in the batch); it returns (sum, pairs) and per-pair
    means, so two halves summed and their metrics combined as the engine does
    (weight 1 each, no loss_mask in the batch) give the whole batch's loss and
    metrics."""
    cfg = from_dict({"algo": {"name": name}, "data": {"path": "x"}})
    graphdef, state = nnx.split(policy[0])
    loss_fn = jax.jit(lambda st, b: P.make_loss(cfg)(nnx.merge(graphdef, st), b))
    ref = logps["ref"].sum(-1).astype(np.float32)
    batch = pairs.subset(np.arange(6))
    if name == "rpo":
        batch["ref_logp"] = ref[:6]
    (s, c), m = loss_fn(state, batch)
    halves = [loss_fn(state, {k: v[i:i + 3] for k, v in batch.items()}) for i in (0, 3)]
    assert float(c) == 6 and float(halves[0][0][1] + halves[1][0][1]) == 6
    lp, n = logps["policy"][:6].sum(-1), pairs.mask[:6].sum(-1)  # the model's own, in float64
    want, _, _ = numpy_loss(name, lp[:, 0], lp[:, 1], ref[:6, 0], ref[:6, 1], n[:, 0], n[:, 1],
                            beta=0.1, gamma=0.5)
    np.testing.assert_allclose(float(s) / 6, want.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(halves[0][0][0] + halves[1][0][0]), float(s), rtol=1e-5)
    metrics_k = {k: jnp.stack([h[1][k] for h in halves]) for k in m}
    combined = combine_metrics(metrics_k, jnp.ones(2))
    for k in m:
        np.testing.assert_allclose(float(combined[k]), float(m[k]), rtol=1e-5, atol=1e-7)


def test_config_rules():
    base = {"algo": {"name": "dpo"}, "data": {"path": "pairs.jsonl"}}
    assert {"dpo", "ipo", "hinge", "robust", "simpo", "rpo"} <= set(algorithms.names())
    for name in ("dpo", "ipo", "hinge", "robust", "simpo", "rpo"):
        alg = algorithms.get(name)
        assert alg.kind == "preference" and alg.summary and alg.pair_loss is not None
        assert alg.needs_reference == (name != "simpo")
        cfg = from_dict({**base, "algo": {"name": name}})
        assert not cfg.is_rl and not cfg.needs_env
    cases = [
        ({"data": {}}, "algo.name='dpo' trains on preference pairs: give data.path"),
        ({"algo": {"name": "dpo", "beta": 0.1}}, "algo.beta=0.1: must be 0 for algo.name='dpo'"),
        ({"preference": {"gamma": 1.0}}, "preference.gamma=1.0: algo.name='dpo' does not use it"),
        ({"preference": {"alpha": 0.5}}, "preference.alpha=0.5: algo.name='dpo' does not use it"),
        ({"algo": {"name": "hinge"}, "preference": {"label_smoothing": 0.1}},
         "preference.label_smoothing=0.1: algo.name='hinge' does not use it"),
        ({"algo": {"name": "simpo"}, "preference": {"reference": "ref_folder"}},
         "preference.reference='ref_folder': algo.name='simpo' does not use it"),
        ({"algo": {"name": "rpo"}, "preference": {"length_normalize": True}},
         "preference.length_normalize=True: algo.name='rpo' does not use it"),
        ({"preference": {"beta": 0.0}}, "preference.beta=0.0: must be > 0"),
        ({"preference": {"label_smoothing": 0.5}}, "preference.label_smoothing=0.5: must lie in"),
        ({"warmup": {"steps": 3}}, "warmup.steps=3: must be 0 for algo.name='dpo'"),
        ({"train": {"data": "env"}}, "train.data='env': an SFT data source"),
        ({"reward": {"format_weight": 1.0}}, "reward: grades sampled completions"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError) as e:
            from_dict({**base, **extra})
        assert message in str(e.value), str(e.value)
    assert "--preference.beta (0.1)" in field_help()


def test_load_pairs_counts_drops_and_pads_to_the_longest(tmp_path, policy):
    """data.on_overlong: drop leaves a too-long pair out and counts it; both sets
    are padded to the longest kept sequence rounded up to 8, not to train.max_len."""
    rows = ROWS[:8] + [{"prompt": "x" * 50, "chosen": "1", "rejected": "2"}]
    cfg = from_dict({"algo": {"name": "dpo"}, "train": {"max_len": 60},
                     "data": {"path": write_rows(tmp_path / "p.jsonl", rows), "eval_path":
                              write_rows(tmp_path / "e.jsonl", ROWS[8:10]), "on_overlong": "drop"}})
    train, held = P.load_pairs(cfg, policy[1])
    assert (len(train), train.dropped, len(held), held.dropped) == (8, 1, 2, 0)
    # "User: 1+1=?\nAssistant: 2\n": 25 tokens at most, so 32 of the 60 allowed
    assert train.lengths.max() == 25 and train.tokens.shape == (8, 2, 32)
    want = build_pairs(ROWS[:8], policy[1], max_len=60)
    np.testing.assert_array_equal(train.tokens, want.tokens[..., :32])
    np.testing.assert_array_equal(train.mask, want.mask[..., :32])
    assert held.tokens.shape == (2, 2, 32)


@pytest.mark.parametrize("rows, extra, message", [
    ([{"prompt": "1+1=?", "chosen": "2"}] * 4, [],
     "data (train pairs): column 'rejected' missing in row 0"),
    ([], [], "holds no rows"),
    ([{"prompt": "1+1=?", "chosen": "2", "rejected": [{"role": "bot", "content": "3"}]}] * 4, [],
     "data (train pairs): row 0, column 'rejected': message 0: expected {'role': one of"),
    # "User: 1+1=?\nAssistant:" (22) + " 2\n" (3) = 25 tokens
    ([{"prompt": "1+1=?", "chosen": "2", "rejected": "3"}] * 4, ["--train.max_len", "24"],
     "data (train pairs): row 0: prompt + chosen is 25 tokens, longer than train.max_len=24; "
     "raise the limit or drop such pairs (data.on_overlong: drop)"),
    (ROWS, ["--preference.reference", "/no/such/folder"],
     "preference.reference='/no/such/folder': not 'policy' and not a directory"),
])
def test_bad_pairs_stop_the_cli_before_compiling(tmp_path, capsys, rows, extra, message):
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    code = cli_main(["train", "--algo.name", "dpo", "--data.path", path, "--data.eval_fraction",
                     "0", "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# 36 pairs: 32 to train on (two steps an epoch, each in 2 micro-batches), 4 held out
TINY = ["--algo.name", "dpo", "--train.steps", "24", "--train.batch_size", "16",
        "--train.micro_batches", "2", "--train.max_len", "32", "--train.progress", "false",
        "--optim.lr", "1e-3", "--optim.schedule", "constant", "--data.eval_fraction", "0.12",
        "--train.ckpt_every", "4", "--preference.beta", "0.5", "--preference.eval_train", "true"]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """(the TINY run's directory, its pairs file): an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("dpo")
    data, out = write_rows(tmp / "pairs.jsonl", ROWS), str(tmp / "run")
    assert cli_main(["train", "--data.path", data, "--out", out, *TINY]) == 0
    return out, data


@pytest.mark.slow
def test_cli_dpo_run_learns_the_preferred_answers(dpo_run):
    """`jaxrl-lm train --algo.name dpo --data.path pairs.jsonl`: the first step is
    scored against a reference equal to the policy (loss log 2, margin 0); the
    loss falls and the preference accuracy on the training pairs rises."""
    out, _ = dpo_run
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in lines] == list(range(1, 25))
    first, early, late = lines[0], lines[:4], lines[-4:]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["reward_margin"]) < 1e-5 and first["reward_accuracy"] == 0.0
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    assert mean(late, "loss") < 0.45 < mean(early, "loss")
    assert mean(late, "reward_accuracy") >= 0.9 > mean(early, "reward_accuracy")
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["pairs"] == {"train": 32, "held_out": 4, "dropped": 0}
    train = summary["train"]  # every training pair, scored after the last step
    assert train["pairs"] == 32 and train["reward_accuracy"] >= 0.9
    assert train["loss"] < 0.4 and train["reward_margin"] > 1.0
    held = summary["held_out"]
    assert held["pairs"] == 4 and set(held) == set(train) and held["loss"] < math.log(2)
    assert os.path.exists(os.path.join(out, "hf", "model.safetensors"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*stale lock:RuntimeWarning")  # the killed run's lock
def test_sigkill_and_resume_is_bit_identical(dpo_run, tmp_path):
    """The same run SIGKILLed after step 10 in a process of its own (checkpoint 8
    or, if its write was cut short, 4 intact), then resumed: the same hf/
    weights, metrics lines and evaluation numbers as the run never interrupted."""
    full, data = dpo_run
    run = str(tmp_path / "killed")
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXRL_LM_KILL_AFTER_STEP="10",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")  # as conftest's
    r = subprocess.run([sys.executable, "-m", "jaxrl_lm.cli", "train", "--data.path", data,
                        "--out", run, *TINY], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert not os.path.exists(os.path.join(run, "summary.json"))
    assert cli_main(["train", "--data.path", data, "--out", run, "--resume", *TINY]) == 0
    a, b = (json.load(open(os.path.join(d, "summary.json"))) for d in (full, run))
    assert a["resumed_from"] == 0 and b["resumed_from"] in (8, 4)
    assert a["held_out"] == b["held_out"] and a["train"] == b["train"]
    from safetensors.numpy import load_file

    wa, wb = (load_file(os.path.join(d, "hf", "model.safetensors")) for d in (full, run))
    assert sorted(wa) == sorted(wb) and len(wa) > 5
    for k in wa:
        assert np.array_equal(wa[k], wb[k]), k
    rows_a, rows_b = ([json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]
                      for d in (full, run))
    assert [r["step"] for r in rows_b] == list(range(1, 25))
    drop = lambda row: {k: v for k, v in row.items() if not is_timing(k)}  # noqa: E731
    assert [drop(x) for x in rows_a] == [drop(y) for y in rows_b]
