"""One job per run directory: the `--out` checks and the lock.

    check_out(out, resume=...)    before anything compiles: ConfigError when
                                  `out` cannot be (or should not become) a run
                                  directory
    with RunLock(out): ...        out/.lock held while the job writes to out

The lock is a JSON file, `{"host", "pid", "started", ...}`, created with
O_CREAT | O_EXCL (atomic: of two jobs, one creates it and the other sees it)
and removed when the job ends, normally or by an exception. A job killed
outright (SIGKILL, a lost node) leaves it behind, so a lock is stale, and
taken over with a warning, when:

- it names this host and a process that is no longer running (or a pid now
  reused by another process: its start time differs), or
- it names this SLURM job (SLURM_JOB_ID) at an earlier SLURM_RESTART_COUNT:
  the job was requeued, possibly onto another node.

A lock from another host that is not this SLURM job's cannot be judged from
here: the error says how to remove it by hand. In a multi-process job only
process 0 takes the lock (`enabled=False` on the others); all of them write
into the folder it guards.

SIGTERM (a SLURM preemption, `kill`) is not such a kill: under `jaxrl-lm` it
raises `cli_args.Terminated`, so the job unwinds and releases its lock as
after any exception; the lock is never left half written or half removed
(`cli_args.sigterm_deferred`), nor taken by an `acquire` that did not return.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
import warnings
from typing import Any

from jaxrl_lm.cli_args import sigterm_deferred
from jaxrl_lm.config import ConfigError

LOCK_NAME = ".lock"


def _step_folders(directory: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    except OSError:
        return []


def check_out(out: str, *, resume: bool) -> None:
    """ConfigError `--out OUT: <reason>` when OUT is a file, lies under a
    file, sits in a folder this process cannot write, or (without --resume)
    already holds a run's checkpoints, which a fresh run would write over.
    Creates nothing."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out {out}: is a file, not a directory")
    parent = path
    while not os.path.exists(parent):  # the nearest folder that exists
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} is not writable (permission denied)")
    if resume:
        return
    for sub in ("checkpoints", os.path.join("warmup", "checkpoints")):
        steps = _step_folders(os.path.join(path, sub))
        if steps:
            raise ConfigError(
                f"--out {out}: already holds a run (checkpoints at steps "
                f"{', '.join(map(str, steps))} in {os.path.join(out, sub)}); pass --resume to "
                f"continue it, or remove it (or choose another --out) to start again")


def _proc(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from
    /proc (Linux); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    proc = _proc(pid)
    return proc is None or proc[0] != "Z"  # a zombie has ended


def _slurm() -> tuple[str | None, int]:
    return os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def owner_info() -> dict[str, Any]:
    """What a lock says about the job that holds it (this process)."""
    job, restart = _slurm()
    proc = _proc(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "proc_start": proc[1] if proc else None, "slurm_job": job,
            "slurm_restart": restart, "argv": sys.argv}


def stale_reason(info: dict) -> str | None:
    """Why the job a lock names can no longer be running, or None if it may be."""
    job, restart = _slurm()
    if job and info.get("slurm_job") == job and restart > int(info.get("slurm_restart") or 0):
        return (f"SLURM job {job} was requeued (restart {restart}; the lock is from restart "
                f"{info.get('slurm_restart') or 0})")
    if info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not _running(pid):
        return f"process {pid} is not running"
    proc = _proc(pid)
    if info.get("proc_start") is not None and proc is not None and proc[1] != info["proc_start"]:
        return f"pid {pid} now belongs to another process"
    return None


def describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on host {info.get('host')}, started "
            f"{info.get('started')}")


class RunLock:
    """Holds run_dir/.lock from `acquire` (or `with`) to `release`.

    Args:
      run_dir: the run directory; created (with missing parents) if needed, and
        removed again on release if the lock made it and it is still empty.
      enabled: False on processes other than 0 of a job: a no-op.

    `acquire` raises ConfigError naming the holder when another job holds
    the lock, or when the folder cannot be created.
    """

    def __init__(self, run_dir: str, *, enabled: bool = True):
        self.run_dir, self.enabled = os.path.abspath(run_dir), enabled
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self.info: dict | None = None
        self._made: list[str] = []

    def _create(self) -> bool:
        info = owner_info()
        with sigterm_deferred():  # a SIGTERM here is raised once self.info is set
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
                f.flush()
                os.fsync(f.fileno())
            self.info = info
        return True

    def _read(self) -> tuple[dict | None, str]:
        """The holder's info and the file's text; None for a lock being written
        (or torn), after waiting a little for it; ({}, "") when it is gone."""
        text = ""
        for _ in range(10):
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                return {}, ""
            try:
                info = json.loads(text)
                if isinstance(info, dict):
                    return info, text
            except json.JSONDecodeError:
                pass
            time.sleep(0.1)
        return None, text

    def _take_over(self, text: str) -> None:
        """Remove a stale lock whose content is `text`, unless another job took
        it over first (then its new lock is put back)."""
        aside = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        with open(aside) as f:
            moved = f.read()
        if moved != text:  # not the stale lock: a job that took it over first
            os.rename(aside, self.path)
            return
        os.remove(aside)

    def acquire(self) -> "RunLock":
        if not self.enabled:
            return self
        try:
            return self._acquire()
        except BaseException:  # a SIGTERM (cli_args.Terminated) just after the lock was taken:
            self.release()  # the caller never got it to release
            self._remove_made()
            raise

    def _acquire(self) -> "RunLock":
        out = self.run_dir
        missing = []
        d = out
        while not os.path.exists(d):
            missing.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot create the folder ({e.strerror})") from None
        self._made = missing
        for _ in range(3):
            try:
                if self._create():
                    return self
            except OSError as e:
                self._remove_made()
                raise ConfigError(f"--out {out}: cannot write its lock file {self.path} "
                                  f"({e.strerror})") from None
            info, text = self._read()
            if info == {}:
                continue  # released in the meantime
            if info is None:
                raise ConfigError(
                    f"--out {out}: its lock file {self.path} is unreadable ({text[:80]!r}); "
                    f"if no job is using this folder, remove it by hand: rm {self.path}")
            reason = stale_reason(info)
            if reason is None:
                here = info.get("host") == socket.gethostname()
                advice = ("wait for it to finish, or choose another --out" if here else
                          f"this host ({socket.gethostname()}) cannot tell whether it still "
                          f"runs; if it does not, remove the lock by hand: rm {self.path}")
                raise ConfigError(f"--out {out}: in use by another job ({describe(info)}; "
                                  f"{self.path}): {advice}")
            warnings.warn(f"--out {out}: taking over a stale lock ({describe(info)}): "
                          f"{reason}", RuntimeWarning, stacklevel=2)
            self._take_over(text)
        raise ConfigError(f"--out {out}: could not take its lock {self.path}: other jobs "
                          f"keep taking it")

    def _remove_made(self) -> None:
        for d in self._made:  # deepest first
            try:
                os.rmdir(d)
            except OSError:
                break
        self._made = []

    def release(self) -> None:
        """Remove the lock if this job still holds it (a lock another job took
        over stays, with a warning), then the folders it made if still empty."""
        if self.info is None:
            return
        with sigterm_deferred():
            info, _ = self._read()
            if info is not None and info != {} and info != json.loads(json.dumps(self.info)):
                warnings.warn(f"{self.path} is now held by {describe(info)}; left in place",
                              RuntimeWarning, stacklevel=2)
            elif info:
                os.remove(self.path)
            self.info = None
            self._remove_made()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
