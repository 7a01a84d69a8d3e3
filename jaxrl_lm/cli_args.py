"""The command line's error format, shared by every `jaxrl-lm` parser.

An expected failure is one line on stderr, `error: <message>`, and exit status
2 (docs/reliability.md). argparse's own usage errors (an unknown flag, a
missing required one, a value it cannot convert or a choice it does not know)
follow the same format through `ArgumentParser`, which every parser of the
package instantiates instead of `argparse.ArgumentParser`:

    error: jaxrl-lm bench envs: argument --steps: invalid int value: 'x' (see jaxrl-lm bench envs --help)

SIGTERM (a SLURM preemption, `kill`) or a first Ctrl-C during a command
raises `Terminated` (`sigterm_unwinds`, set by `jaxrl_lm.cli.main`), in a
training loop at the end of the current step (`sigterm_deferred`): the
command's `finally` blocks run, so a run finishes its pending checkpoint,
closes metrics.jsonl and releases its lock, and `jaxrl-lm` exits with status
143 (128 + 15; 130 for Ctrl-C). A second Ctrl-C stops it at once.

This module imports only the standard library: `bench sampler` parses its
flags before JAX starts.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator, NoReturn


class UsageError(ValueError):
    """A bad command-line value the CLI reports as `error: <message>`."""


class UsageExit(SystemExit):
    """Raised (status 2) after a usage error has been printed; `jaxrl_lm.cli.main`
    returns its status, so in-process callers get 2 like the shell does."""


def error_line(message: str) -> str:
    """`error: <message>` on one line (newlines and runs of spaces folded)."""
    return "error: " + " ".join(str(message).split())


def print_error(message: str) -> int:
    """Print `error: <message>` as one line on stderr; the exit status 2."""
    print(error_line(message), file=sys.stderr)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors are one `error:` line naming
    the command, the flag and the value, with a pointer to --help, instead of
    the usage text and `PROG: error: ...`; exit status 2 all the same."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise UsageExit(2)


def int_list(text: str) -> str:
    """argparse `type=` of a comma-separated list of ints ("1,1024,4096"): the
    text as given, once every item reads as an int (argparse names the flag
    and the value otherwise); sizes are checked where they are used."""
    try:
        [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected comma-separated ints") from None
    return text


# -- SIGTERM and Ctrl-C ------------------------------------------------------

SIGTERM_STATUS = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERMed job
SIGINT_STATUS = 128 + signal.SIGINT  # 130, Ctrl-C


class Terminated(BaseException):
    """SIGTERM (SLURM preemption or time limit, `kill`, `scancel`) or a first
    Ctrl-C arrived. Raised in the main thread, a BaseException like
    KeyboardInterrupt, so `except Exception` does not catch it while every
    `finally` and `with` on the way out runs. `signum` is the signal."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum} ({signal.Signals(signum).name})")
        self.signum = signum

    @property
    def status(self) -> int:
        """The exit status a shell reports for a job ended by this signal."""
        return 128 + self.signum


_deferring = 0  # open `sigterm_deferred` blocks
_pending: int | None = None  # the signal that arrived inside one of them


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A block that SIGTERM (or a first Ctrl-C) does not interrupt: `Terminated`
    is raised when it ends instead. The training loops run each step in one,
    so a run stops between steps, never inside a save or a logger's thread;
    taking or removing a lock is never left half done."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _pending is not None and not _deferring:
        signum, _pending = _pending, None
        raise Terminated(signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM and a first Ctrl-C raise `Terminated` in the
    main thread (at the end of the `sigterm_deferred` block they land in)
    instead of ending the process on the spot, so the job's cleanup runs: a
    pending asynchronous checkpoint is finished (`RunFiles` closes the
    checkpointer), metrics.jsonl is closed, the run directory's lock removed.
    Further SIGTERMs are ignored while that cleanup runs (SLURM follows with
    SIGKILL after its KillWait); a second Ctrl-C is Python's KeyboardInterrupt,
    at once. The previous handlers are restored on exit. A no-op outside the
    main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _pending
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _deferring:
            _pending = signum
            return
        raise Terminated(signum)

    global _pending
    _pending = None
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        _pending = None
