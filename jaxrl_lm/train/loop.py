"""The Python outer loop: data -> jitted step -> log -> checkpoint, with resume.

Everything random in a run is derived from the root key stored in the
TrainState and the step number (`fold_in(rng, step)`), and the data of a step
is a pure function of that key, so a run resumed from a checkpoint replays
exactly the steps it lost: killed and resumed, it ends bit-identical to a run
that was never interrupted (on one backend, with the same mesh).

Testing hook: with JAXRL_LM_KILL_AFTER_STEP=k in the environment, the process
SIGKILLs itself right after step k (logged, checkpoint possibly still being
written), as a crashed job would.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jaxrl_lm.config import Config, dump_yaml, to_dict
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.checkpoint import Checkpointer
from jaxrl_lm.train.logging import RunLogger
from jaxrl_lm.train.step import Engine, LossFn, TrainState, make_optimizer

# (step, key) -> global batch of host arrays [B, ...]; the same on every process.
DataFn = Callable[[int, jax.Array], dict[str, np.ndarray]]


@dataclasses.dataclass
class RunResult:
    state: TrainState  # the final train state (device arrays)
    engine: Engine  # what compiled the step (mesh, shardings, graphdef)
    last_metrics: dict  # the last logged metrics row
    resumed_from: int  # the step restored at start (0 if fresh)


def maybe_initialize_distributed(cfg: Config | None = None) -> bool:
    """Start jax.distributed when the run spans several processes.

    Sources, first match wins: the config (mesh.coordinator_address,
    mesh.num_processes, mesh.process_id); the variables JAXRL_LM_COORDINATOR /
    JAXRL_LM_NUM_PROCESSES / JAXRL_LM_PROCESS_ID (set by
    launch/local_multiprocess.sh); JAXRL_LM_DISTRIBUTED=1, which lets JAX
    detect the cluster itself (TPU pod, SLURM). CPU processes talk over gloo.
    Returns True when it initialized.
    """
    m = cfg.mesh if cfg is not None else None
    env = os.environ
    if m is not None and m.coordinator_address is not None and m.num_processes is not None:
        args = (m.coordinator_address, m.num_processes, m.process_id)
    elif "JAXRL_LM_COORDINATOR" in env:
        args = (env["JAXRL_LM_COORDINATOR"], int(env["JAXRL_LM_NUM_PROCESSES"]),
                int(env["JAXRL_LM_PROCESS_ID"]))
    elif env.get("JAXRL_LM_DISTRIBUTED") == "1":
        args = ()
    else:
        return False
    if env.get("JAX_PLATFORMS", "").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(*args)
    return True


def _kill_point() -> int | None:
    v = os.environ.get("JAXRL_LM_KILL_AFTER_STEP")
    return int(v) if v else None


class RunFiles:
    """What a run writes under its directory: Orbax checkpoints and the logger.

    `begin(state, resume=...)` returns the state to train from (the newest
    intact checkpoint when resuming) and sets `start`; `after_step`
    checkpoints on schedule and honours the JAXRL_LM_KILL_AFTER_STEP hook. Use
    it as a context manager so both writers are closed (and pending
    checkpoints finished) on any exit. It keeps no train state of its own.
    """

    def __init__(self, cfg: Config, run_dir: str):
        t = cfg.train
        self.steps, self.ckpt_every, self.log_every = t.steps, t.ckpt_every, t.log_every
        self.ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=t.keep_checkpoints)
        self.start, self.logger = 0, None
        self._cfg, self._run_dir = cfg, run_dir
        self._config, self._kill_after = to_dict(cfg), _kill_point()

    def begin(self, state: TrainState, *, resume: bool) -> TrainState:
        restored = self.ckpt.restore(state) if resume else None
        if restored is not None:
            state, meta = restored
            self.start = int(meta["step"])
        t = self._cfg.train
        self.logger = RunLogger(self._run_dir, dump_yaml(self._cfg), total_steps=t.steps,
                                start_step=self.start, progress=t.progress,
                                enabled=jax.process_index() == 0)
        return state

    def log_due(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.steps

    def after_step(self, done: int, state: TrainState,
                   data_state: Callable[[int], Any] | None = None) -> None:
        """Checkpoint after step `done` when due, storing `data_state(done)`
        (default `{"step": done}`); then the kill hook."""
        if done % self.ckpt_every == 0 or done == self.steps:
            data = data_state(done) if data_state else {"step": done}
            self.ckpt.save(done, state, data_state=data, config=self._config)
        if self._kill_after is not None and done == self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def __enter__(self) -> "RunFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.ckpt.close()
        if self.logger is not None:
            self.logger.close()


def train(cfg: Config, run_dir: str, *, model: nnx.Module, loss_fn: LossFn, data_fn: DataFn,
          resume: bool = False, ref_params: Any = None,
          data_state_fn: Callable[[int], Any] | None = None) -> RunResult:
    """Run `cfg.train.steps` steps of `loss_fn` on `data_fn` batches into `run_dir`.

    Args:
      model: the NNX module to train (its params carry logical axis names).
      loss_fn: `(model, batch[, ref_model]) -> ((loss_sum, denom), metrics)`.
      data_fn: `(step, key) -> batch`, pure, so resumed runs see the same data.
      resume: continue from the newest intact checkpoint in run_dir/checkpoints.
      ref_params: frozen reference params (same tree as the model's) for KL terms.
      data_state_fn: step -> JSON-able data/curriculum state stored in checkpoints.
    """
    t = cfg.train
    mesh = mesh_lib.make_mesh(cfg.mesh.shape)
    mesh_lib.check_mesh(mesh, t.batch_size // t.micro_batches)
    optimizer, schedule = make_optimizer(cfg.optim, t.steps)
    engine = Engine(model, loss_fn, optimizer, schedule, mesh, micro_batches=t.micro_batches)
    state = engine.init_state(t.seed)
    if ref_params is not None:
        ref_params = mesh_lib.place(ref_params, engine.param_sh)
    row, tokens = {}, 0
    with RunFiles(cfg, run_dir) as files:
        state = files.begin(state, resume=resume)
        for step in range(files.start, t.steps):
            key = jax.random.fold_in(state.rng, step)
            batch = data_fn(step, key)
            tokens += int(np.prod(np.shape(batch["tokens"]))) if "tokens" in batch else 0
            state, metrics = engine.step(state, engine.place_batch(batch), ref_params)
            done = step + 1
            if files.log_due(done):
                row = files.logger.log(done, jax.device_get(metrics), tokens=tokens or None)
                tokens = 0
            files.after_step(done, state, data_state_fn)
    return RunResult(state, engine, row, files.start)
