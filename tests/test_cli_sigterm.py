"""SIGTERM (a SLURM preemption, `kill`, `scancel`) stops `jaxrl-lm` the way an
exception would (issue 27, docs/reliability.md "One job per run directory"):
the pending checkpoint is finished, metrics.jsonl kept, the run directory's
lock removed, exit status 143 (128 + SIGTERM), and `--resume` continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxrl_lm import cli_args
from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.train import trainer
from jaxrl_lm.train.logging import read_metrics
from jaxrl_lm.train.run_lock import LOCK_NAME, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", os.path.join(ROOT, "launch", "configs", "tiny.yaml"),
        "--train.batch_size", "8", "--train.max_len", "24", "--optim.warmup_steps", "1",
        "--train.progress", "false", "--train.ckpt_every", "5"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONFAULTHANDLER": "1"}


def _sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # interrupted by the handler's exception
    raise AssertionError("SIGTERM did not interrupt")


# -- in-process: the handler, the deferral, the lock --------------------------

def test_sigterm_raises_terminated_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cli_args.Terminated):
        with cli_args.sigterm_unwinds():
            _sigterm_self()
    assert signal.getsignal(signal.SIGTERM) is before
    with cli_args.sigterm_unwinds():  # a second SIGTERM during the cleanup is ignored
        with pytest.raises(cli_args.Terminated):
            _sigterm_self()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_inside_a_step_lets_that_step_finish_and_log(tmp_path, monkeypatch, capsys):
    """The training loop runs each step in a deferred block: a SIGTERM in the
    middle of step 3 stops the run after step 3 is logged, before step 4."""
    from jaxrl_lm.train.engine import Engine

    step, calls = Engine.step, []

    def slow_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # an immediate raise would land here
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "step", slow_step)
    run = str(tmp_path / "run")
    assert cli_main(["train", *TINY, "--train.steps", "6", "--out", run]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3] and len(calls) == 3
    assert not os.path.exists(os.path.join(run, LOCK_NAME))


def test_ctrl_c_unwinds_like_sigterm_and_a_second_one_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with cli_args.sigterm_unwinds():
        with pytest.raises(cli_args.Terminated) as first:
            with cli_args.sigterm_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # deferred: not interrupted
        assert first.value.signum == signal.SIGINT and first.value.status == 130
        with pytest.raises(KeyboardInterrupt):  # the second: at once, even when deferred
            with cli_args.sigterm_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(10)
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)

    monkeypatch.setattr(trainer, "run_sft", interrupted)
    assert cli_main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("jaxrl-lm train: stopped by Ctrl-C "
                                                   "(exit status 130)")
    assert os.listdir(tmp_path) == []


def test_sigterm_is_deferred_to_the_end_of_a_critical_block():
    steps = []
    with cli_args.sigterm_unwinds():
        with pytest.raises(cli_args.Terminated):
            with cli_args.sigterm_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # not interrupted
                steps.append("finished")
            steps.append("after")  # not reached
    assert steps == ["finished"]


def test_sigterm_while_the_lock_is_taken_leaves_no_lock(tmp_path, monkeypatch):
    """SIGTERM between creating the lock file and recording it: raised once the
    lock is complete, and acquire() releases it (its caller never got it)."""
    fsync = os.fsync

    def interrupted(fd):  # the lock file is open, its content not yet synced
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", interrupted)
    real_release = RunLock.release
    seen = []

    def release(self):
        with open(self.path) as f:  # taken whole before the signal is raised
            seen.append(json.load(f)["pid"])
        real_release(self)

    monkeypatch.setattr(RunLock, "release", release)
    run = tmp_path / "new" / "run"
    with cli_args.sigterm_unwinds():
        with pytest.raises(cli_args.Terminated):
            RunLock(str(run)).acquire()  # raises: the lock is released inside
    assert seen == [os.getpid()]
    assert os.listdir(tmp_path) == []


def test_cli_train_sigterm_releases_the_lock_and_exits_143(tmp_path, monkeypatch, capsys):
    def preempted(*args, **kwargs):
        assert os.path.exists(os.path.join(run, LOCK_NAME))  # held while the job runs
        _sigterm_self()

    run = str(tmp_path / "new" / "run")
    monkeypatch.setattr(trainer, "run_sft", preempted)
    assert cli_main(["train", *TINY, "--out", run]) == 143 == cli_args.SIGTERM_STATUS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("jaxrl-lm train: stopped by SIGTERM")
    assert os.listdir(tmp_path) == []  # the lock and the empty folders it made are gone


# -- a real `jaxrl-lm train` process ------------------------------------------

# The CLI with a pause right after the checkpoint of step 10 is handed to Orbax
# (written asynchronously) until the SIGTERM arrives; the step then ends at once
# and `Terminated` is raised while that save may still be running.
PAUSED = """
import sys, time
from jaxrl_lm import cli_args
from jaxrl_lm.train.run_dir import RunFiles

after_step = RunFiles.after_step

def paused(self, done, state, data_state=None):
    after_step(self, done, state, data_state)
    if done == 10:  # wait for the SIGTERM, then end the step at once
        open(sys.argv[1], "w").close()
        for _ in range(6000):
            if cli_args._pending:
                break
            time.sleep(0.1)

RunFiles.after_step = paused
from jaxrl_lm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _wait_for(cond, proc, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: "
                                 f"{proc.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.1)


def _sigterm(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hang: SIGABRT makes faulthandler print every stack
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        raise AssertionError(f"no exit within 120 s of SIGTERM; the stacks:\n{err[-6000:]}")
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "stopped by SIGTERM (exit status 143)" in err
    return err


def _resume(run: str, *flags: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "jaxrl_lm.cli", "train", *TINY, *flags, "--out",
                        run, "--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two runs, each compiling the tiny model (~1 min on 2 loaded cores)
def test_sigterm_during_an_async_save_then_resume(tmp_path):
    run, marker = str(tmp_path / "run"), str(tmp_path / "at-step-10")
    argv = ["train", *TINY, "--train.steps", "12", "--out", run]
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, marker, *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: os.path.exists(marker), proc, "step 10")
        assert os.path.exists(os.path.join(run, LOCK_NAME))
        _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["10", "5"]  # finished
    logged = read_metrics(run)
    assert [m["step"] for m in logged] == list(range(1, 11))
    summary = _resume(run, "--train.steps", "12")  # the same config
    assert summary["resumed_from"] == 10  # step 10's checkpoint was finished, not corrupt
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["10", "12", "5"]
    after = read_metrics(run)
    assert [m["step"] for m in after] == list(range(1, 13)) and after[:10] == logged
    assert not os.path.exists(os.path.join(run, LOCK_NAME))


@pytest.mark.slow  # two runs, each compiling the tiny model (~1 min on 2 loaded cores)
def test_sigterm_at_an_arbitrary_step_then_resume(tmp_path):
    """No hook: the signal lands wherever the run is (a step, a save, logging) and
    the run stops at the end of that step. (When the signal could interrupt any
    line, 1 run in 11 hung here: issue 27.)"""
    run = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "jaxrl_lm.cli", "train", *TINY,
                             "--train.steps", "100000", "--out", run], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = os.path.join(run, "metrics.jsonl")
        _wait_for(lambda: os.path.exists(metrics) and len(read_metrics(run)) >= 7, proc, "step 7")
        _sigterm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not os.path.exists(os.path.join(run, LOCK_NAME))
    steps = sorted(int(n) for n in os.listdir(os.path.join(run, "checkpoints")) if n.isdigit())
    assert steps and steps[-1] >= 5
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if not n.isdigit()]
    logged = read_metrics(run)
    assert logged[-1]["step"] >= steps[-1]
    # the newest checkpoint is intact: a resume (two steps further) starts from it
    summary = _resume(run, "--allow-config-change", "--train.steps", str(steps[-1] + 2))
    assert summary["resumed_from"] == steps[-1]
    assert read_metrics(run)[: steps[-1]] == logged[: steps[-1]]
