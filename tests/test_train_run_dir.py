"""Determinism: a run SIGKILLed at several steps and resumed each time ends
with parameters bit-identical to an uninterrupted run (CPU, 2 devices). The
run directory lock: who holds it, a second holder refused, stale locks (a
dead process, a reused pid, a requeued SLURM job) taken over, a lock from
another host or an unreadable one an error that says how to remove it."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxrl_lm.config import ConfigError
from jaxrl_lm.train.run_lock import LOCK_NAME, RunLock, _proc, owner_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = """
import sys, numpy as np, jax
from jaxrl_lm.train import mesh, sft
from tests.test_train_sft import tiny_cfg, toy_data
from tests.test_train_engine import toy_model
run, resume = sys.argv[1], sys.argv[2] == "1"
res = sft.train_sft(tiny_cfg(mesh=(2, 1, 1), steps=8, ckpt_every=2), run, model=toy_model(),
                 loss_fn=sft.sft_loss, data_fn=toy_data(8), resume=resume)
np.savez(run + "/final.npz", *[np.asarray(x) for x in jax.tree.leaves(res.state)])
print("resumed_from", res.resumed_from)
"""


def launch(run_dir, resume, kill_after=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("JAXRL_LM_KILL_AFTER_STEP", None)
    if kill_after is not None:
        env["JAXRL_LM_KILL_AFTER_STEP"] = str(kill_after)
    return subprocess.run([sys.executable, "-c", ENTRY, run_dir, "1" if resume else "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    full = str(tmp_path / "full")
    r = launch(full, False)
    assert r.returncode == 0, r.stderr[-2000:]

    run = str(tmp_path / "killed")
    resumed_from = []
    # killed after step 3 (between checkpoints), then 6 (just as checkpoint 6
    # is being written); each restart resumes from the newest intact one
    for i, kill in enumerate((3, 6)):
        r = launch(run, resume=i > 0, kill_after=kill)
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
        assert not os.path.exists(os.path.join(run, "final.npz"))
    r = launch(run, True)
    assert r.returncode == 0, r.stderr[-2000:]
    resumed_from = int(r.stdout.split("resumed_from")[-1])
    assert resumed_from in (6, 4)  # 6 if its async write finished before the kill

    a, b = np.load(os.path.join(full, "final.npz")), np.load(os.path.join(run, "final.npz"))
    assert len(a.files) == len(b.files) > 5
    for k in a.files:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in open(os.path.join(run, "metrics.jsonl"))]
    assert steps == list(range(1, 9))


# -- the run directory lock (jaxrl_lm.train.run_lock), in-process ------------------

def _lock(run_dir, **info):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_NAME), "w") as f:
        json.dump({**owner_info(), **info}, f)
    return os.path.join(run_dir, LOCK_NAME)


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_file_says_who_holds_it_and_goes_with_the_folders_it_made(tmp_path):
    run = tmp_path / "a" / "b"
    with RunLock(str(run)) as lock:
        with open(lock.path) as f:
            info = json.load(f)
        assert (info["host"], info["pid"]) == (socket.gethostname(), os.getpid())
        assert info["started"][:4].isdigit()
        (tmp_path / "kept").mkdir()
    assert os.listdir(tmp_path) == ["kept"]  # a/b made by the lock, empty: removed
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    with RunLock(str(run)):
        pass
    assert os.listdir(run) == ["metrics.jsonl"]  # a folder that was there stays


def test_live_holder_on_this_host_refuses_a_second_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _lock(str(tmp_path), pid=holder.pid, proc_start=None)
        with pytest.raises(ConfigError, match=rf"in use by another job \(pid {holder.pid} on "
                                              rf"host .*\): wait for it to finish, or choose "
                                              rf"another --out"):
            RunLock(str(tmp_path)).acquire()
        assert os.path.exists(path)
        RunLock(str(tmp_path), enabled=False).acquire().release()  # process != 0: no lock
        assert os.path.exists(path)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_stale_locks_are_taken_over_with_a_warning(tmp_path):
    # the process is gone
    _lock(str(tmp_path), pid=_dead_pid())
    with pytest.warns(RuntimeWarning, match=r"taking over a stale lock .*is not running"):
        RunLock(str(tmp_path)).acquire().release()
    # the pid now belongs to another process (its start time differs)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(str(tmp_path), pid=holder.pid, proc_start=_proc(holder.pid)[1] - 1)
        with pytest.warns(RuntimeWarning, match=rf"pid {holder.pid} now belongs to another"):
            lock = RunLock(str(tmp_path)).acquire()
        assert os.path.exists(lock.path)
        lock.release()
        assert not os.path.exists(lock.path)
    finally:
        holder.kill()
        holder.wait()


def test_lock_from_another_host_says_how_to_remove_it(tmp_path):
    path = _lock(str(tmp_path), host="node-17", pid=_dead_pid())
    with pytest.raises(ConfigError, match=rf"pid \d+ on host node-17, .*cannot tell whether it "
                                          rf"still runs; if it does not, remove the lock by "
                                          rf"hand: rm {path}$"):
        RunLock(str(tmp_path)).acquire()
    assert os.path.exists(path)


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _lock(str(tmp_path), host="node-3", pid=1, slurm_job="4242", slurm_restart=1)
    with pytest.raises(ConfigError, match="on host node-3"):  # the same run of the job
        RunLock(str(tmp_path)).acquire()
    _lock(str(tmp_path), host="node-3", pid=1, slurm_job="4242", slurm_restart=0)
    with pytest.warns(RuntimeWarning, match=r"SLURM job 4242 was requeued \(restart 1; the lock "
                                            r"is from restart 0\)"):
        RunLock(str(tmp_path)).acquire().release()


def test_unreadable_lock_is_an_error(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"host": "a", "pi')
    with pytest.raises(ConfigError, match=r"lock file .* is unreadable .*remove it by hand: rm "):
        RunLock(str(tmp_path)).acquire()
