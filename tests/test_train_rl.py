"""RL training end to end at tiny sizes: the CLI pipeline (warm-up, RL,
before/after evaluation, HF export), exact resume, `jaxrl-lm eval`, and the
skipped-step limit counting every epoch's step."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import load_config
from jaxrl_lm.train.engine import NonFiniteError
from jaxrl_lm.train.logging import read_metrics
from jaxrl_lm.train.rl import RLRunner
from jaxrl_lm.train.trainer import build_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "launch", "configs", "tictactoe.yaml")
TINY = ["--warmup.steps", "3", "--warmup.batch_size", "8", "--train.steps", "2",
        "--train.batch_size", "8", "--algo.group_size", "4", "--optim.warmup_steps", "0",
        "--eval.episodes", "8", "--train.progress", "false", "--rollout.max_new_tokens", "6",
        "--env.max_turns", "5", "--train.micro_batches", "1"]


def test_cli_pipeline_and_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli_main(["train", "--config", PRESET, "--out", out, *TINY]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["before"]) == set(summary["after"]) == {"random", "minimax"}
    for res in summary["after"].values():
        assert abs(res["win"] + res["draw"] + res["loss"] - 1.0) < 1e-6
        assert 0.0 <= res["invalid_rate"] <= 1.0
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["finite"] == 1.0 for r in rows)
    assert os.path.exists(os.path.join(out, "warmup", "metrics.jsonl"))
    printed = capsys.readouterr().out
    assert "evaluation" in printed
    # where the time went: each iteration's phases, their totals, the printed line
    phases = ("rollout", "update", "trust_region")
    assert all(r[f"time/{p}_s"] > 0 for r in rows for p in phases)
    assert "time/eval_s" not in rows[0] and rows[1]["time/eval_s"] > 0  # eval.every: the last
    t = summary["time_s"]
    for p in phases:
        assert t[f"rl_{p}"] == pytest.approx(sum(r[f"time/{p}_s"] for r in rows), abs=0.051)
    assert t["rl_eval"] == pytest.approx(rows[1]["time/eval_s"], abs=0.051)
    assert sum(t[f"rl_{p}"] for p in (*phases, "eval")) <= t["rl"] + 0.2
    assert sum(t[k] for k in ("warmup", "eval_before", "rl", "eval_after")) <= \
        summary["wall_s"] + 0.2
    assert f"time: warm-up {t['warmup']:.1f} s, evaluation before" in printed
    # the exported policy plays through `jaxrl-lm eval`
    # the run's own env options apply first (its prompt), then the ones given
    trained = load_config(PRESET).env.options
    assert cli_main(["eval", "--checkpoint", out, "--env", "tictactoe", "--opponent", "minimax",
                     "--option", "illegal=end", "--episodes", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["episodes"] == 4
    assert res["options"] == {**trained, "opponent": "minimax", "illegal": "end"}
    assert res["win"] == 0.0  # nobody beats minimax
    # the bare HF folder has no run config: only the options given
    assert cli_main(["eval", "--checkpoint", os.path.join(out, "hf"), "--env", "tictactoe",
                     "--option", "prompt=short", "--episodes", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["options"] == {"prompt": "short"}


@pytest.mark.parametrize("argv,message", [
    (["--env", "chess"], "--env 'chess': unknown env"),
    (["--env", "tictactoe", "--opponent", "god"], "opponent"),
    (["--env", "tictactoe", "--option", "noise"], "expected KEY=VALUE"),
])
def test_eval_rejects_bad_input(tmp_path, capsys, argv, message):
    assert cli_main(["eval", "--checkpoint", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_resume_is_bit_identical(tmp_path):
    """A 2-iteration run that lost its last checkpoint (killed after iteration 1)
    resumes to the same params as the uninterrupted run. Same config on both
    sides: the learning-rate schedule depends on the run's length."""
    base = ["--eval.episodes", "8", "--train.batch_size", "8", "--algo.group_size", "4",
            "--optim.warmup_steps", "0",
            "--train.progress", "false", "--rollout.max_new_tokens", "6", "--train.ckpt_every", "1",
            "--train.steps", "2", "--train.micro_batches", "1"]

    def run(out, resume):
        cfg = load_config(PRESET, base)
        assert cfg.algo.epochs == 2 and cfg.algo.beta > 0  # the preset's settings are covered
        model, tok = build_policy(cfg)
        return RLRunner(cfg, model, tok).train(str(out), resume=resume)

    straight = run(tmp_path / "a", False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "2")  # the kill came before this save
    resumed = run(tmp_path / "b", True)
    assert resumed.resumed_from == 1
    for x, y in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_group_may_span_micro_batches(tmp_path):
    """Advantages come from the whole batch before the update, so one group of
    8 episodes cut into 4 micro-batches of turn rows gives the update of 1.
    Adam's eps is set far above the gradient entries so that its step is linear
    in the gradient: with eps 1e-8 a coordinate whose gradient is ~1e-9 turns
    float rounding in the accumulation order into a visible step difference.
    One group: the preset's env.mix (two entries, a group each at least) is off."""
    base = ["--eval.episodes", "8", "--train.batch_size", "8", "--algo.group_size", "8",
            "--env.mix", "[]",
            "--optim.warmup_steps", "0",
            "--train.progress", "false", "--rollout.max_new_tokens", "6", "--train.steps", "1",
            "--env.max_turns", "4", "--train.ckpt_every", "1", "--optim.eps", "1.0",
            "--optim.lr", "1.0", "--algo.epochs", "1"]
    params, rows = [], []
    for k in ("1", "4"):
        cfg = load_config(PRESET, [*base, "--train.micro_batches", k])
        model, tok = build_policy(cfg)
        runner = RLRunner(cfg, model, tok)
        start = jax.tree.map(np.asarray, runner.engine.init_state(cfg.train.seed).params)
        params.append(runner.train(str(tmp_path / k)).state.params)
        rows.append(json.loads(open(tmp_path / k / "metrics.jsonl").readline()))
    # and so are the logged metrics (token means weighted by tokens, maxima as maxima)
    for key in ("loss", "grad_norm", "policy_loss", "kl", "approx_kl", "ratio_mean",
                "ratio_max", "clip_frac_low", "clip_frac_high", "env_return"):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-5, abs=1e-7), key
    moved = 0.0
    for x, y, s in zip(*map(jax.tree.leaves, params), jax.tree.leaves(start)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(np.asarray(x) - s).max()))
    assert moved > 1e-3, moved  # the update did something, 1e4 x the tolerance


def test_update_move_bound_shrinks_the_step_along_itself(tmp_path):
    """With trust_region.max_update_move at 0.3 of the update's real move, the kept params
    lie on the unguarded iteration's own step, at the logged scale of it (to
    float32 rounding), and the sampled tokens' log-probs move by at most the
    bound, as measured again outside the loop. The optimizer's moments are
    kept, unless trust_region.scale_momentum scales the first one by the same factor
    (a third run). Every run sees the same batch: a rollout is a pure function
    of (params, key)."""
    import optax

    base = ["--eval.episodes", "8", "--train.batch_size", "8", "--algo.group_size", "4",
            "--optim.warmup_steps", "0",
            "--train.progress", "false", "--rollout.max_new_tokens", "6", "--train.steps", "1",
            "--env.max_turns", "4", "--train.ckpt_every", "1", "--train.micro_batches", "1"]

    def run(name, extra):
        cfg = load_config(PRESET, [*base, *extra])
        runner = RLRunner(cfg, *build_policy(cfg))
        eng = runner.engine
        init = eng.init_state(cfg.train.seed)
        start = jax.tree.map(np.array, init.params)
        # the loop's first batch, collected here too (training donates init's buffers)
        batch = eng.place_batch(runner.collect(init.params, eng.rest, init.params,
                                               jax.random.fold_in(init.rng, 0))[0])
        result = runner.train(str(tmp_path / name))
        params, opt_state = result.state.params, result.state.opt_state
        row = json.loads(open(tmp_path / name / "metrics.jsonl").readline())
        moments[name] = [jax.tree.map(np.asarray, optax.tree_utils.tree_get(opt_state, k))
                         for k in ("mu", "nu")]
        return row, params, start, float(runner.update_move(params, eng.rest, batch))

    moments = {}

    # the preset's scale_momentum is idle without a bound
    row, full, start, full_move = run("off", ["--trust_region.max_update_move", "0"])
    assert "update_move" not in row and full_move > 0
    bound = 0.3 * full_move
    row, kept, _, kept_move = run("on", ["--trust_region.max_update_move", repr(bound),
                                         "--trust_region.scale_momentum", "false"])
    assert row["update_move"] == pytest.approx(full_move, rel=1e-5)  # the loop's own measure
    scale = row["update_scale"]
    assert 0.0 < scale < 1.0
    step_over_ulp = 0.0
    for f, k, s in zip(*map(jax.tree.leaves, (full, kept, start))):
        f, k, s = (np.asarray(x, np.float64) for x in (f, k, s))
        expected = s + scale * (f - s)
        ulp = np.spacing(np.abs(s).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(k - expected) <= 2 * ulp + 1e-6 * np.abs(f - s))
        step_over_ulp = max(step_over_ulp, float((np.abs(k - s) / ulp).max()))
    assert step_over_ulp > 100  # the kept step is far above float32 rounding somewhere
    assert kept_move == pytest.approx(row["update_move_kept"], rel=1e-5)
    assert 0.5 * bound < kept_move <= bound, (kept_move, bound)
    row_s, scaled, _, _ = run("scale", ["--trust_region.max_update_move", repr(bound),
                                        "--trust_region.scale_momentum", "true"])
    assert row_s["update_scale"] == scale
    for k, s_ in zip(*map(jax.tree.leaves, (kept, scaled))):  # the same params as without it
        np.testing.assert_array_equal(np.asarray(s_), np.asarray(k))
    (mu, nu), (mu_k, nu_k), (mu_s, nu_s) = moments["off"], moments["on"], moments["scale"]
    for a, k, s_ in zip(*map(jax.tree.leaves, (mu, mu_k, mu_s))):
        np.testing.assert_array_equal(k, a)
        np.testing.assert_allclose(s_, scale * a, rtol=1e-6, atol=1e-12)
    for a, k, s_ in zip(*map(jax.tree.leaves, (nu, nu_k, nu_s))):
        np.testing.assert_array_equal(k, a)
        np.testing.assert_array_equal(s_, a)


def test_scale_first_moment_scales_mu_only():
    import jax.numpy as jnp
    import optax

    from jaxrl_lm.train.rl import scale_first_moment

    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([1.0, -2.0, 0.5])}
    for opt in (optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
                optax.lion(1e-3)):
        state = opt.update(grads, opt.init(params), params)[1]
        scaled = scale_first_moment(state, jnp.float32(0.25))
        get = optax.tree_utils.tree_get
        for a, b in zip(jax.tree.leaves(get(state, "mu")), jax.tree.leaves(get(scaled, "mu"))):
            np.testing.assert_array_equal(np.asarray(b), 0.25 * np.asarray(a))
            assert np.abs(np.asarray(a)).max() > 0
        rest = [x for x in jax.tree.leaves(state) if x.ndim == 0] + jax.tree.leaves(
            get(state, "nu") or {})
        rest_scaled = [x for x in jax.tree.leaves(scaled) if x.ndim == 0] + jax.tree.leaves(
            get(scaled, "nu") or {})
        for a, b in zip(rest, rest_scaled):  # step counts and Adam's second moment kept
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="no first moment"):
        scale_first_moment(optax.adafactor(1e-3).init(params), jnp.float32(0.5))


def test_action_coverage_counts_the_policys_own_distinct_actions():
    """Worked by hand: episode 0 plays 0, 0, 1, 2 (3 distinct); episode 1 plays
    1, an invalid answer (its stand-in 3 does not count), 1, then is over;
    episode 2 plays 2 and an out-of-range 9. (3 + 1 + 1) / 3 episodes / 5 actions."""
    from types import SimpleNamespace

    import jax.numpy as jnp

    from jaxrl_lm.rollout import Trajectory
    from jaxrl_lm.evaluation import episode_stats

    action = jnp.array([[0, 1, 2], [0, 3, 9], [1, 1, 2], [2, 4, 2]])
    active = jnp.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
    valid = jnp.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], bool)
    zeros = jnp.zeros(action.shape)
    traj = Trajectory(prompt=None, prompt_len=None, completion=None, completion_len=zeros,
                      logp=None, active=active, action=action, valid=valid, env_reward=zeros,
                      reward=zeros, done=zeros,
                      states=SimpleNamespace(legal_action_mask=jnp.ones((4, 3, 5), bool)))
    assert float(episode_stats(traj)["action_coverage"]) == pytest.approx(5 / 15)


def test_turn_weight_credits_each_collected_turns_own_faults(tmp_path):
    """End to end through RLRunner.collect: after a short warm-up the policy's
    answers are a mix of legal moves and faults, and turn_weight w moves each
    kept row's advantage by w * whiten(-fault) over the kept rows, with
    faults read back on the host from the row's own text (the free cells are
    the digits the `board` prompt shows; the answer goes through the host
    parse rule), not from the rollout's flags."""
    from jaxrl_lm.envs.text import parse_text
    from jaxrl_lm.train.trainer import run_warmup

    base = ["--warmup.steps", "60", "--warmup.batch_size", "16", "--train.batch_size", "16",
            "--algo.group_size", "4", "--train.progress", "false", "--env.max_turns", "5",
            "--train.micro_batches", "1", "--algo.beta", "0"]
    cfg = load_config(PRESET, base)
    model, tok = build_policy(cfg)
    run_warmup(cfg, str(tmp_path), model, tok, resume=False)
    advs = {}
    for w in (0.0, 1.5):
        runner = RLRunner(load_config(PRESET, [*base, "--algo.turn_weight", repr(w)]), model, tok)
        init = runner.engine.init_state(cfg.train.seed)
        batch, _ = runner.collect(init.params, runner.engine.rest, init.params, jax.random.key(3))
        batch = jax.device_get(batch)
        advs[w] = np.asarray(batch["adv"], np.float64)
    loss = np.asarray(batch["loss_mask"]) > 0
    kept = loss.any(1)
    fault = np.zeros(len(kept))
    for i in np.flatnonzero(kept):
        first = int(np.argmax(loss[i]))
        tokens = np.asarray(batch["tokens"][i])
        prompt = runner.text.decode(tokens[:first], first).replace(tok.pad_token or "", "")
        answer = runner.text.decode(tokens[loss[i]], int(loss[i].sum()))
        action, valid = parse_text(runner.env, answer)
        free = {int(c) - 1 for c in prompt if c.isdigit()}
        fault[i] = not (valid and action in free)
    # a mix (0.32 of 60 kept turns when written), so the signal is not 0
    assert 0.05 < fault[kept].mean() < 0.95, fault[kept].mean()
    r = -fault[kept]
    expected = 1.5 * (r - r.mean()) / np.sqrt(r.var() + 1e-8)
    np.testing.assert_allclose(advs[1.5][kept] - advs[0.0][kept], expected, atol=1e-5)
    np.testing.assert_array_equal(advs[1.5][~kept], advs[0.0][~kept])


def test_expected_reward_needs_an_env_with_one():
    """shaping.expected_reward on tic-tac-toe (no expected reward) fails before
    anything compiles, naming the field."""
    cfg = load_config(PRESET, ["--shaping.expected_reward", "true"])
    with pytest.raises(ValueError, match="shaping.expected_reward: env 'tictactoe'"):
        RLRunner(cfg, *build_policy(cfg))


def test_a_prompt_longer_than_the_limit_is_an_error_not_a_cut(tmp_path):
    """env.max_prompt_len below the rendered prompt's length: the warm-up data,
    the evaluation and the RL iteration each stop with the field and the
    length needed, instead of training on cut prompts (the board prompt's
    length is measured here from the env's host render)."""
    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface
    from jaxrl_lm.evaluation import evaluate
    from jaxrl_lm.models.tokenizer import encode
    from jaxrl_lm.train.trainer import build_data, warmup_config

    cfg = load_config(PRESET, TINY + ["--env.max_prompt_len", "12", "--train.max_len", "19"])
    model, tok = build_policy(cfg)
    env = envs.make(cfg.env.name, **cfg.env.options)
    state = env.init(jax.random.key(0))
    whole = len(encode(tok, env.render_text(jax.device_get(state))))
    text = TextInterface(env, tok, max_prompt_len=12)
    assert int(text.full_length(state)) == whole > 12
    assert int(text.render(state)[1]) == 12  # what would have been trained on, silently
    need = f"env.max_prompt_len=12 is too short: .* set env.max_prompt_len >= {whole}"
    with pytest.raises(ValueError, match=need.replace(".* set", ".*warm-up step 0.* set")):
        build_data(warmup_config(cfg), tok)(0, jax.random.key(0))
    with pytest.raises(ValueError, match=need):
        evaluate(model, tok, cfg.env.name, dict(cfg.env.options), episodes=4, max_prompt_len=12,
                 max_new_tokens=6)
    runner = RLRunner(cfg, model, tok)
    state0, ref = runner.init()
    with pytest.raises(ValueError, match=need.replace(".* set", ".*RL iteration 0.* set")):
        runner.iteration(state0, ref, 0)


@pytest.mark.slow
def test_skipped_steps_in_a_row_count_each_epoch(tmp_path):
    """NaN advantages (as a 0/0 in a reward normaliser would give) make every
    step non-finite. With 2 epochs per iteration, 2 iterations skip 4 steps in a
    row: a limit of 5 lets the run finish with the params it started from, a
    limit of 3 stops it after iteration 2, its metrics and checkpoints kept."""
    base = ["--eval.episodes", "8", "--train.batch_size", "8", "--algo.group_size", "4",
            "--optim.warmup_steps", "0",
            "--train.progress", "false", "--rollout.max_new_tokens", "6", "--train.steps", "2",
            "--train.ckpt_every", "1", "--train.micro_batches", "1", "--env.max_turns", "3",
            "--train.max_skipped_steps", "5"]
    cfg = load_config(PRESET, base)
    assert cfg.algo.epochs == 2
    model, tok = build_policy(cfg)
    runner = RLRunner(cfg, model, tok)
    collect = runner.collect

    def nan_advantages(*args, **kw):
        batch, stats = collect(*args, **kw)
        return {**batch, "adv": batch["adv"] * np.nan}, stats

    runner.collect = nan_advantages
    start = jax.tree.map(np.asarray, runner.engine.init_state(cfg.train.seed).params)
    res = runner.train(str(tmp_path / "a"))
    assert int(res.state.step) == 4 and int(res.state.skipped) == 4
    for x, y in zip(jax.tree.leaves(res.state.params), jax.tree.leaves(start)):
        assert np.array_equal(np.asarray(x), y)
    runner.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_skipped_steps=3))
    with pytest.raises(NonFiniteError, match=r"^RL iteration 2: 4 optimizer steps in a row .*"
                       r"max_skipped_steps=3"):
        runner.train(str(tmp_path / "b"))
    rows = read_metrics(str(tmp_path / "b"))
    assert [(r["step"], r["finite"], r["skipped"]) for r in rows] == [(1, 0.0, 2), (2, 0.0, 4)]
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["1", "2"]
