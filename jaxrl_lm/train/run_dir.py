"""What a run writes under its directory, and the outcome of a stage.

    run_dir/config.yaml      the resolved config
    run_dir/metrics.jsonl    one JSON object per logged step (and events/ for TensorBoard)
    run_dir/checkpoints/     Orbax checkpoints: the train state and the data state
                             (a corrupt one moved aside to checkpoints/<step>.corrupt)
    run_dir/best/            RL with eval.keep best: the best evaluated params (train/validation.py)
    run_dir/.lock            while a job writes here (`run_lock.RunLock`)

`RunFiles` owns the checkpointer and the logger of one run; `RunResult` is
what a training stage returns. Everything random in a run is derived from the
root key in the TrainState and the step number (`fold_in(rng, step)`), and a
step's data is a pure function of that key, so a run resumed from a
checkpoint replays exactly the steps it lost: killed and resumed, it ends
bit-identical to a run that was never interrupted (on one backend, with the
same mesh).

On resume the newest checkpoint must have been written under the same
config, except for the fields that cannot change the state
(`checkpoint.RESUME_IGNORED`); otherwise the run stops with a ConfigError
naming the fields that differ, before anything is written, unless
`allow_config_change`. `check_resume` makes the same check from the
checkpoints' JSON alone, before anything compiles. A corrupt checkpoint is
moved aside and the one before it used (`checkpoint.Checkpointer.restore`).

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

from jaxrl_lm.config import Config, dump_yaml, to_dict
from jaxrl_lm.train.checkpoint import Checkpointer
from jaxrl_lm.train.engine import Engine, TrainState
from jaxrl_lm.train.logging import RunLogger


@dataclasses.dataclass
class RunResult:
    state: TrainState  # the final train state (device arrays)
    engine: Engine  # what compiled the step (mesh, shardings, graphdef)
    last_metrics: dict  # the last logged metrics row
    resumed_from: int  # the step restored at start (0 if fresh)
    # eval.keep best: {"params", "iteration", "score"} of the policy the run ends with
    kept: dict | None = None
    # seconds spent in each phase of the iterations this process ran (RL: rollout,
    # update, trust_region, eval); a resumed run counts only its own
    times: dict | None = None


def _kill_point() -> int | None:
    v = os.environ.get("JAXRL_LM_KILL_AFTER_STEP")
    return int(v) if v else None


def check_resume(cfg: Config, run_dir: str, *, allow_config_change: bool = False) -> None:
    """ConfigError when the newest readable checkpoint in run_dir/checkpoints
    was written under a config that differs from `cfg` (and the change is not
    allowed). Reads the checkpoints' JSON only, so the CLI can refuse before
    compiling; `RunFiles.begin` checks again, and the arrays, when the stage
    starts. Nothing to check when run_dir holds no checkpoints."""
    directory = os.path.join(run_dir, "checkpoints")
    if allow_config_change or not os.path.isdir(directory):
        return
    ckpt = Checkpointer(directory)
    try:
        for step in ckpt.all_steps()[::-1]:
            try:
                meta = ckpt.read_meta(step)
            except Exception:  # noqa: BLE001 - corrupt: begin() moves it aside
                continue
            ckpt.check_config(step, meta, to_dict(cfg))
            return
    finally:
        ckpt.close()


class RunFiles:
    """What a run writes under its directory: Orbax checkpoints and the logger.

    `begin(state, resume=..., allow_config_change=...)` returns the state to
    train from (the newest intact checkpoint when resuming; ConfigError when it
    was written under a different config and the change is not allowed) and
    sets `start`; `after_step` checkpoints on schedule and honours the
    JAXRL_LM_KILL_AFTER_STEP hook. Use it as a context manager so both writers
    are closed (and pending checkpoints finished) on any exit. It keeps no
    train state of its own.
    """

    def __init__(self, cfg: Config, run_dir: str):
        t = cfg.train
        self.steps, self.ckpt_every, self.log_every = t.steps, t.ckpt_every, t.log_every
        self.ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=t.keep_checkpoints)
        self.start, self.logger = 0, None
        self._cfg, self._run_dir = cfg, run_dir
        self._config, self._kill_after = to_dict(cfg), _kill_point()

    def begin(self, state: TrainState, *, resume: bool,
              allow_config_change: bool = False) -> TrainState:
        restored = None
        if resume:
            restored = self.ckpt.restore(state, config=self._config,
                                         allow_config_change=allow_config_change)
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
