"""Evaluations during RL (`eval.every`) and keeping the best policy
(`eval.keep: best`, train/validation.py): which policy is kept (scripted
scores), that the evaluations leave training unchanged, that the run ends with
and exports the kept policy, and that a crashed run resumed ends the same."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import ConfigError, load_config
from jaxrl_lm.models import load_hf
from jaxrl_lm.train.checkpoint import Checkpointer
from jaxrl_lm.train.logging import is_timing, read_metrics
from jaxrl_lm.train.rl import RLRunner
from jaxrl_lm.train.run_dir import RunFiles
from jaxrl_lm.train.trainer import build_policy
from jaxrl_lm.train.validation import Validation
from tests.test_reliability import same_metrics, snapshot
from tests.test_train_checkpoint import corrupt
from tests.test_train_rl import PRESET, TINY

BEST = ["--eval.every", "1", "--eval.keep", "best"]
RUN = [*TINY, "--train.steps", "3", "--train.ckpt_every", "1", "--train.keep_checkpoints", "5"]


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def scripted(returns):
    """An evaluation that ignores the policy and returns the next scripted value."""
    it = iter(returns)

    def fn(graphdef, state, key, seed):
        return {"return": float(next(it)), "win": 0.0, "episodes": 8}

    return fn


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(PRESET, [*TINY, *BEST, "--train.steps", "4"])
    model, tok = build_policy(cfg)
    runner = RLRunner(cfg, model, tok)
    return cfg, tok, runner, runner.init()[0]


def test_one_config_eval_compiles_once_before_during_and_after(tiny, tmp_path, monkeypatch):
    """A train run evaluates before RL, every eval.every iterations and after
    it with one ConfigEval: after its first call, neither the evaluations
    during training nor the final one trace the rollout again, and each gives
    what a fresh evaluate_config gives."""
    from jaxrl_lm import sampling
    from jaxrl_lm.evaluation import evaluate_config
    from jaxrl_lm.evaluation.play import ConfigEval

    cfg, tok, runner, state = tiny
    model = nnx.merge(runner.engine.graphdef, state.params, runner.engine.rest)
    want = evaluate_config(model, tok, cfg)
    traces = []
    real = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: traces.append(1) or real(*a, **k))
    ev = ConfigEval(cfg, tok)
    assert ev(model) == want
    first = len(traces)
    val = Validation(cfg, tok, runner.engine.graphdef, str(tmp_path), evals=ev)
    row = val(1, state.params, runner.engine.rest)
    assert ev(model) == want
    assert first > 0 and len(traces) == first
    assert set(want) == {"random", "minimax"} and row["eval/score"] == pytest.approx(
        (row["eval/random/return"] + row["eval/minimax/return"]) / 2)
    val.close()


def test_keep_best_keeps_the_earliest_best_score_and_reads_it_back(tiny, tmp_path):
    cfg, tok, runner, state = tiny
    run = str(tmp_path)
    val = Validation(cfg, tok, runner.engine.graphdef, run)
    # score = mean over the two targets (exact in binary): 0.125, 0.375, 0.375 (a tie:
    # not kept), 0.25
    val.fns = {"random": scripted([0.25, 0.75, 1.0, 0.5]),
               "minimax": scripted([0.0, 0.0, -0.25, 0.0])}
    params = {k: jax.tree.map(lambda x, k=k: x + k, state.params) for k in (1, 2, 3, 4)}
    rows = {k: val(k, params[k], runner.engine.rest) for k in (1, 2, 3, 4)}
    assert [rows[k]["eval/score"] for k in (1, 2, 3, 4)] == [0.125, 0.375, 0.375, 0.25]
    assert rows[3]["eval/random/return"] == 1.0 and rows[3]["eval/minimax/return"] == -0.25
    assert "eval/random/episodes" not in rows[1]
    kept = val.kept(state.params)
    val.close()
    assert (kept["iteration"], kept["score"]) == (2, 0.375)
    for got, want in zip(leaves(kept["params"]), leaves(params[2])):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(os.path.join(run, "best"))) == ["2"]

    # resumed: the record is read back; an equal score does not save again, a higher one does
    again = Validation(cfg, tok, runner.engine.graphdef, run)
    again.begin(resumed=True)
    assert (again.best_step, again.best_score) == (2, 0.375)
    again.fns = {"random": scripted([0.75, 1.0]), "minimax": scripted([0.0, 0.0])}
    again(2, params[4], runner.engine.rest)
    assert again.best_step == 2
    again(5, params[4], runner.engine.rest)
    kept = again.kept(state.params)
    again.close()
    assert (kept["iteration"], kept["score"]) == (5, 0.5)
    for got, want in zip(leaves(kept["params"]), leaves(params[4])):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(os.path.join(run, "best"))) == ["5"]


def test_a_record_under_other_eval_settings_is_dropped(tiny, tmp_path):
    cfg, tok, runner, state = tiny
    val = Validation(cfg, tok, runner.engine.graphdef, str(tmp_path))
    val.fns = {"random": scripted([0.5])}
    val(1, state.params, runner.engine.rest)
    val.close()
    other = load_config(PRESET, [*TINY, *BEST, "--train.steps", "4", "--eval.episodes", "16"])
    again = Validation(other, tok, runner.engine.graphdef, str(tmp_path))
    with pytest.warns(RuntimeWarning, match="other eval settings"):
        again.begin(resumed=True)
    assert again.best_step is None
    again.fns = {"random": scripted([0.1])}
    again(1, state.params, runner.engine.rest)  # lower, but the only score now: kept
    assert again.kept(state.params)["score"] == 0.1
    again.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_corrupt_best_policy_ends_the_run_with_its_last_policy(tiny, tmp_path):
    cfg, tok, runner, state = tiny
    val = Validation(cfg, tok, runner.engine.graphdef, str(tmp_path))
    val.fns = {"random": scripted([0.5])}
    val(1, state.params, runner.engine.rest)
    val.best.wait()
    corrupt(os.path.join(str(tmp_path), "best", "1"), "flipped")
    with pytest.warns(RuntimeWarning, match="does not read back intact"):
        assert val.kept(state.params) is None
    val.close()


@pytest.mark.parametrize("extra, message", [
    (["--eval.every", "0", "--eval.keep", "best"], "set eval.every > 0"),
    (["--eval.keep", "first"], "eval.keep"),
    (["--eval.every", "2", "--algo.name", "sft"], "eval.every=2"),
    (["--eval.every", "-1"], "eval.every"),
])
def test_bad_eval_settings_are_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PRESET, extra)


def train(out, *extra, resume=False):
    args = ["train", "--config", PRESET, "--out", out, *RUN, *extra]
    assert cli_main(args + (["--resume"] if resume else [])) == 0
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("validation")
    plain, best = str(base / "plain"), str(base / "best")
    return plain, train(plain), best, train(best, *BEST)


def checksums(run, step, where="checkpoints"):
    ckpt = Checkpointer(os.path.join(run, where))
    try:
        return ckpt.read_meta(step)["checksums"]
    finally:
        ckpt.close()


def test_the_evaluations_leave_training_unchanged(runs):
    plain, _, best, _ = runs
    for step in (1, 2, 3):  # every train state, bit for bit
        assert checksums(plain, step) == checksums(best, step)
    a, b = read_metrics(plain), read_metrics(best)
    assert [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert all(k.startswith("eval/") or k == "time/eval_s" for k in set(y) - set(x))
        assert {k: v for k, v in x.items() if not is_timing(k)} == \
            {k: v for k, v in y.items() if k in x and not is_timing(k)}
        assert "eval/random/return" in y and "eval/minimax/return" in y and "eval/score" in y


def test_the_run_ends_with_and_exports_the_best_policy(runs):
    _, _, best, summary = runs
    scores = [r["eval/score"] for r in read_metrics(best)]
    k = int(np.argmax(scores)) + 1  # the earliest of equal scores
    assert summary["kept"] == {"iteration": k, "score": scores[k - 1]}
    assert os.listdir(os.path.join(best, "best")) == [str(k)]
    for name in ("eval_score.png", "eval_random_return.png", "eval_minimax_return.png"):
        assert os.path.exists(os.path.join(best, "plots", name)), name
    model, _ = load_hf(os.path.join(best, "hf"))
    exported = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert checksums(best, k, "best") == [
        int(np.sum(x.view(np.uint32), dtype=np.uint32)) for x in exported]


def test_a_crashed_run_resumed_keeps_the_same_policy(runs, tmp_path, monkeypatch):
    _, _, best, summary = runs
    out = str(tmp_path / "crash")
    after_step = RunFiles.after_step

    def crash(self, done, state, data_state=None):
        after_step(self, done, state, data_state)
        if done == 2 and "warmup" not in self.ckpt.directory:
            raise RuntimeError("crash after iteration 2")

    monkeypatch.setattr(RunFiles, "after_step", crash)
    with pytest.raises(RuntimeError, match="crash after iteration 2"):
        train(out, *BEST)
    monkeypatch.setattr(RunFiles, "after_step", after_step)
    resumed = train(out, *BEST, resume=True)
    assert resumed["kept"] == summary["kept"] and resumed["after"] == summary["after"]
    assert snapshot(os.path.join(out, "hf")) == snapshot(os.path.join(best, "hf"))
    same_metrics(read_metrics(out), read_metrics(best))
