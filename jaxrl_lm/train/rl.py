"""The RL stage: rollout -> advantages -> jitted sharded update(s) -> log -> checkpoint.

One iteration: `collect` (one jitted program) plays `train.batch_size`
episodes of `cfg.env` with the current params (groups of `algo.group_size`
share a task), shapes the per-turn rewards (the `shaping` section, KL in the
reward), computes the algorithm's advantages (`algorithms.get(algo.name)`),
packs every turn into a training row and, for a KL in the loss, scores the
rows once under the frozen reference (a copy of the params RL starts from; for
a LoRA model the base itself with its adapters off, `lora.without_adapters`,
so no second copy of the weights exists); then `algo.epochs` optimizer steps of
the shared clipped loss on those rows (`Engine.step`, exact micro-batch
accumulation, non-finite guard). With `trust_region.max_update_move` set,
one more forward pass measures how far those updates moved the sampled
tokens' log-probs (mean absolute change, in nats) and an iteration that
moved them further is shrunk: the params go back along the iteration's own
step until the move is within the bound (a trust region checked after the
fact, `bound_move`; the optimizer's step count and second moment are kept,
its first moment too unless `trust_region.scale_momentum` scales it by the
same factor).

Each iteration's wall time is split into its phases, logged as
`time/rollout_s` (the rollout, rewards, advantages and reference log-probs:
`collect`, and `reward.functions` on the host when there are any),
`time/update_s` (the optimizer steps), `time/trust_region_s` (`bound_move`)
and `time/eval_s` (the evaluations during training, when due); their totals
over the run end in `RunResult.times`.

Everything random comes from `fold_in(rng, iteration)`, and a rollout is a
pure function of (params, key), so a killed run resumed from its last
checkpoint replays exactly what it lost, like the supervised loop.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxrl_lm import algorithms, reward_functions
from jaxrl_lm.cli_args import sigterm_deferred
from jaxrl_lm.algorithms import common
from jaxrl_lm.config import Config
from jaxrl_lm.evaluation.stats import episode_stats
from jaxrl_lm.models import lora
from jaxrl_lm.models.tokenizer import pad_id, stop_tokens
from jaxrl_lm.rewards import shape_rewards
from jaxrl_lm.rollout import check_prompt_fit, make_rollout
from jaxrl_lm.data.prompts import batch_rows
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train import tasks
from jaxrl_lm.train.engine import Engine, SkipStreak, TrainState
from jaxrl_lm.train.mix import EnvMix
from jaxrl_lm.train.optim import make_optimizer
from jaxrl_lm.train.run_dir import RunFiles, RunResult
from jaxrl_lm.train.validation import Validation


def scale_first_moment(opt_state: Any, scale: jax.Array) -> Any:
    """The optax state with every first moment (`mu`: Adam's, Lion's) times scale."""
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    if mu is None:
        raise ValueError("scale_first_moment: the optimizer state has no first moment 'mu'")
    return optax.tree_utils.tree_set(
        opt_state, mu=jax.tree.map(lambda m: (m * scale).astype(m.dtype), mu))


class RLRunner:
    """Compiles the rollout and update for one config; `train` runs the loop.

    traj_stats: optional `(trajectory) -> {name: scalar}`, traced into `collect`:
    task-specific metrics of the very episodes trained on (e.g.
    `evaluation.answers.answer_stats`), logged with each iteration's stats.
    """

    def __init__(self, cfg: Config, model: nnx.Module, tokenizer: Any, *,
                 traj_stats: Callable[[Any], dict] | None = None):
        self.cfg, self.tokenizer, self.traj_stats = cfg, tokenizer, traj_stats
        a, r, t = cfg.algo, cfg.rollout, cfg.train
        self.algorithm = algorithms.get(a.name)
        if self.algorithm.kind != "rl":
            raise ValueError(f"algo.name={a.name!r}: RLRunner runs RL algorithms, not "
                             f"{self.algorithm.kind}")
        self.env, self.text = tasks.make_task(cfg, tokenizer)
        if cfg.shaping.expected_reward and not self.env.has_expected_reward:
            raise ValueError(f"shaping.expected_reward: env {self.env.name!r} has no expected "
                             f"reward (its reward is not a noisy sample of a known mean); "
                             f"bandit has one")
        self.pad_id = pad_id(tokenizer)
        self.num_groups = t.batch_size // a.group_size
        self.play = make_rollout(
            self.env, self.text, num_groups=self.num_groups,
            group_size=a.group_size, max_turns=tasks.max_turns(cfg),
            max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k,
            top_p=r.top_p, min_p=r.min_p,
            stop_tokens=stop_tokens(tokenizer, newline=r.stop_at_newline),
            invalid_penalty=cfg.shaping.invalid_penalty,
            standin_reward=cfg.shaping.standin_reward)
        # --- env.mix (train/mix.py): one rollout per group, joined into one batch ---
        self.mix = EnvMix.from_config(cfg, tokenizer) if cfg.env.mix else None
        if self.mix is not None:
            self.play = self.mix.play
        # --- end env.mix ---
        rows = tasks.max_turns(cfg) * t.batch_size
        self.mesh = mesh_lib.make_mesh(cfg.mesh.shape)
        mesh_lib.check_mesh(self.mesh, rows // t.micro_batches)
        self.optimizer, self.schedule = make_optimizer(cfg.optim, t.steps * a.epochs)
        loss_fn = common.make_loss(a, max_len=cfg.env.max_prompt_len + r.max_new_tokens,
                                   temperature=r.temperature)
        self.engine = Engine(model, loss_fn, self.optimizer, self.schedule, self.mesh,
                             micro_batches=t.micro_batches)
        # data runs: host reward functions on decoded text (reward.functions)
        self.host_fns = [(e["fn"], reward_functions.resolve(e["fn"]), float(e.get("weight", 1.0)))
                         for e in cfg.reward.functions]
        self.collect = jax.jit(self._collect)
        self.rollout = jax.jit(self._rollout)
        self.update_move = jax.jit(self._update_move)
        self.shrink = jax.jit(lambda old, new, s: jax.tree.map(
            lambda o, n: (o + (n - o) * s).astype(n.dtype), old, new))
        self.scale_mu = jax.jit(scale_first_moment)

    def _rollout(self, params, rest, key, rows=None):
        graphdef, state = nnx.split(nnx.merge(self.engine.graphdef, params, rest))
        return self.play(graphdef, state, key, rows)

    def _collect(self, params, rest, ref_params, key, rows=None, traj=None, host_reward=None):
        """Rollout (unless `traj` is given: the host-reward path), rewards,
        advantages and training rows, as one jitted program."""
        cfg, a = self.cfg, self.cfg.algo
        model = nnx.merge(self.engine.graphdef, params, rest)
        if traj is None:
            graphdef, state = nnx.split(model)
            traj = self.play(graphdef, state, key, rows)
        traj, parts = self._task_rewards(traj, host_reward)
        traj = shape_rewards(cfg.shaping, traj,
                             max_new_tokens=cfg.rollout.max_new_tokens, env=self.env)
        temperature = cfg.rollout.temperature
        if a.beta > 0 and a.kl_in == "reward":
            ref = self._reference(model, ref_params, rest)
            kl_r = common.kl_reward(a, model, ref, traj, pad_id=self.pad_id,
                                    temperature=temperature)
            traj = traj._replace(reward=traj.reward + jnp.where(traj.active, kl_r, 0.0))
        values = common.turn_values(model, traj) if self.algorithm.needs_value else None
        sig = self.algorithm.advantages(a, traj, values)
        if a.turn_weight:
            sig = common.turn_credit(traj, sig, a.turn_weight)
        batch = common.make_batch(traj, sig, pad_id=self.pad_id)
        if a.beta > 0 and a.kl_in == "loss":
            ref = self._reference(model, ref_params, rest)
            batch["ref_logp"] = common.ref_logprobs(ref, batch, chunks=cfg.train.micro_batches,
                                                    temperature=temperature)
        stats = {**episode_stats(traj), **parts}
        if self.mix is not None:  # env.mix: each group's statistics, "<label>/..."
            stats.update(self.mix.group_stats(traj))
        if self.traj_stats is not None:
            stats.update(self.traj_stats(traj))
        stats["kept_turns"] = sig.keep.sum() / jnp.maximum(traj.active.sum(), 1)
        return batch, stats

    def _reference(self, model, ref_params, rest):
        """The frozen reference policy: `ref_params` over `rest`, or, for a LoRA
        model (ref_params None), the policy's own module with its adapters off."""
        if ref_params is None:
            return lora.without_adapters(model)
        return nnx.merge(self.engine.graphdef, ref_params, rest)

    def _update_move(self, params, rest, batch):
        """Mean |log pi(params) - old_logp| over the batch's loss tokens, in nats."""
        model = nnx.merge(self.engine.graphdef, params, rest)
        logp = common.ref_logprobs(model, batch, chunks=self.cfg.train.micro_batches,
                                   temperature=self.cfg.rollout.temperature)
        mask = batch["loss_mask"].astype(jnp.float32)
        diff = jnp.abs(logp - batch["old_logp"]) * mask
        return diff.sum() / jnp.maximum(mask.sum(), 1.0)

    def bound_move(self, state, before, batch, tries: int = 6):
        """Scale the iteration's step (before -> state.params) back until the
        sampled tokens' log-probs move by at most trust_region.max_update_move
        (mean nats). Moves grow less than linearly with the step near full size and
        about linearly near zero, so the search first guesses move ~ scale**0.5
        from above, then bisects log(scale) once a scale within the bound is
        known; it stops at a scale moving them by half the bound or more. After
        `tries` measures it keeps the largest scale found within the bound (0,
        the iteration's start, if none was; a NaN move counts as too far).
        """
        bound, eng = self.cfg.trust_region.max_update_move, self.engine
        move = first = float(self.update_move(state.params, eng.rest, batch))
        if move <= bound:
            return state, {"update_move": first, "update_scale": 1.0, "update_move_kept": move}
        lo, hi, hi_move = 0.0, 1.0, move
        best = (0.0, before, 0.0)
        for _ in range(tries):
            if lo == 0.0:
                scale = hi * (0.98 * bound / hi_move) ** 2 if hi_move == hi_move else hi / 16
            else:
                scale = math.sqrt(lo * hi)
            new = self.shrink(before, state.params, jnp.float32(scale))
            move = float(self.update_move(new, eng.rest, batch))
            if move <= bound:
                lo, best = scale, (scale, new, move)
                if move >= 0.5 * bound:
                    break
            else:
                hi, hi_move = scale, move
        scale, new, move = best
        if self.cfg.trust_region.scale_momentum:
            state = state._replace(opt_state=self.scale_mu(state.opt_state, jnp.float32(scale)))
        return (state._replace(params=new),
                {"update_move": first, "update_scale": scale, "update_move_kept": move})

    def init(self) -> tuple[TrainState, Any]:
        """(train state, frozen reference params or None) to start RL from. None
        without a KL (algo.beta 0), and for a LoRA model, whose reference is its
        frozen base (`_reference`)."""
        state = self.engine.init_state(self.cfg.train.seed)
        ref_params = None
        if self.cfg.algo.beta > 0 and not lora.has_adapters(self.engine.model):
            # the frozen reference: the params RL starts from
            ref_params = jax.tree.map(jnp.copy, state.params)
        return state, ref_params

    def _task_rewards(self, traj, host_reward):
        """A data run's reward: answer_weight x the verifier's answer reward +
        format_weight x the format reward + the host functions' weighted sum
        (`host_reward` f32[B], already weighted); each part's batch mean is
        logged. Env play: unchanged."""
        if not tasks.is_dataset(self.cfg):
            return traj, {}
        w = self.cfg.reward
        answer = traj.env_reward[0]
        fmt = jax.vmap(self.env.grader.format)(traj.completion[0], traj.completion_len[0])
        extra = (w.answer_weight - 1.0) * answer + w.format_weight * fmt
        parts = {"reward/answer": answer.mean(), "reward/format": fmt.mean()}
        if host_reward is not None:
            extra = extra + host_reward
        return traj._replace(reward=traj.reward.at[0].add(extra)), parts

    def host_rewards(self, traj) -> tuple[jax.Array, dict[str, float]]:
        """The weighted sum f32[B] of reward.functions on the decoded batch, and
        each function's mean (unweighted)."""
        task = self.env
        comp, n, done_row = jax.device_get((traj.completion[0], traj.completion_len[0],
                                            traj.states.row[0]))
        completions = [self.tokenizer.decode(comp[b, : n[b]], skip_special_tokens=True)
                       for b in range(comp.shape[0])]
        prompts = [task.prompts.texts[r] for r in done_row]
        columns = {c: [v[r] for r in done_row] for c, v in task.prompts.columns.items()}
        total = np.zeros(len(completions))
        means = {}
        workers = self.cfg.reward.workers
        if workers and getattr(self, "_reward_pool", None) is None:
            self._reward_pool = reward_functions.RewardPool(workers)
        for name, fn, weight in self.host_fns:
            if workers:  # reward.workers processes, each on a slice of the batch
                r = self._reward_pool.call(name, prompts, completions, columns)
            else:
                r = reward_functions.call(fn, name, prompts, completions, columns)
            total += weight * r
            means[f"reward/{name}"] = float(r.mean())
        return jnp.asarray(total, jnp.float32), means

    def rows_of(self, it: int) -> jax.Array | None:
        """A prompt dataset's rows for iteration `it` (one per group, each epoch a
        new order: `data.batch_rows`); None for env play."""
        if not tasks.is_dataset(self.cfg):
            return None
        return jnp.asarray(batch_rows(it, self.num_groups, len(self.env), seed=self.cfg.train.seed,
                                      shuffle=self.cfg.data.shuffle))

    def iteration(self, state: TrainState, ref_params: Any, it: int):
        """One RL iteration: (new state, its training batch, rollout stats, step
        metrics). `state` is donated: use the returned one."""
        eng, bounded = self.engine, self.cfg.trust_region.max_update_move > 0
        t0 = time.perf_counter()
        key = jax.random.fold_in(state.rng, it)
        rows = self.rows_of(it)
        if self.host_fns:  # rollout, rewards on the host, then the rest in one program
            traj = self.rollout(state.params, eng.rest, key, rows)
            host_r, host_means = self.host_rewards(traj)
            batch, stats = self.collect(state.params, eng.rest, ref_params, key, rows, traj,
                                        host_r)
            stats = {**stats, **host_means}
        else:
            batch, stats = self.collect(state.params, eng.rest, ref_params, key, rows)
        if self.mix is not None:  # env.mix: a cut prompt names its group
            self.mix.check_fit(stats, self.cfg.env.max_prompt_len, where=f"in RL iteration {it}")
        check_prompt_fit(stats["prompt_cut"], stats["prompt_len_max"],
                         self.cfg.env.max_prompt_len, where=f"in RL iteration {it}")
        batch = eng.place_batch(batch)
        t1 = time.perf_counter()
        # eng.step donates its state: keep the step's start for bound_move
        before = jax.tree.map(jnp.copy, state.params) if bounded else None
        for _ in range(self.cfg.algo.epochs):
            state, metrics = eng.step(state, batch)
        jax.block_until_ready(state.params)
        t2 = time.perf_counter()
        metrics = {**metrics, "time/rollout_s": t1 - t0, "time/update_s": t2 - t1}
        if bounded:
            state, guard = self.bound_move(state, before, batch)
            metrics = {**metrics, **guard, "time/trust_region_s": time.perf_counter() - t2}
        return state, batch, stats, metrics

    def train(self, run_dir: str, *, resume: bool = False, allow_config_change: bool = False,
              evals: Any = None) -> RunResult:
        """`train.steps` iterations into run_dir (logs, checkpoints, resume);
        `evals` (an `evaluation.play.ConfigEval`): the evaluations during training
        play its compiled programs.
        Raises NonFiniteError once `train.max_skipped_steps` optimizer steps in a
        row were skipped by the non-finite guard."""
        state, ref_params = self.init()
        row, kept, totals = {}, None, {}
        val = Validation(self.cfg, self.tokenizer, self.engine.graphdef, run_dir, evals) \
            if self.cfg.eval.every else None
        with RunFiles(self.cfg, run_dir) as files:
            with sigterm_deferred():
                state = files.begin(state, resume=resume,
                                    allow_config_change=allow_config_change)
            streak = SkipStreak(self.cfg.train.max_skipped_steps, int(state.skipped))
            try:
                if val is not None:
                    val.begin(resumed=files.start > 0)
                for it in range(files.start, self.cfg.train.steps):
                    with sigterm_deferred():  # a SIGTERM stops the run between iterations
                        state, batch, stats, metrics = self.iteration(state, ref_params, it)
                        done = it + 1
                        if val is not None and val.due(done):
                            t = time.perf_counter()
                            evals = val(done, state.params, self.engine.rest)
                            metrics = {**metrics, "time/eval_s": time.perf_counter() - t}
                        else:
                            evals = {}
                        for k, v in metrics.items():
                            if k.startswith("time/"):
                                totals[k] = totals.get(k, 0.0) + v
                        if files.log_due(done) or evals:
                            row = files.logger.log(done, {**jax.device_get(stats),
                                                          **jax.device_get(metrics), **evals},
                                                   tokens=int(batch["loss_mask"].sum()))
                        files.after_step(done, state, lambda n: {"iteration": n})
                    # NonFiniteError at the limit
                    streak.update(metrics, at=f"RL iteration {done}", steps=self.cfg.algo.epochs)
                if val is not None:
                    kept = val.kept(state.params)
            finally:
                if val is not None:
                    val.close()
        times = {k[len("time/"):-len("_s")]: round(v, 1) for k, v in totals.items()}
        return RunResult(state, self.engine, row, files.start, kept, times)
