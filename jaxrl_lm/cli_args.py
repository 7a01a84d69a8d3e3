"""The command line's error format, shared by every `jaxrl-lm` parser.

An expected failure is one line on stderr, `error: <message>`, and exit status
2 (docs/reliability.md). argparse's own usage errors (an unknown flag, a
missing required one, a value it cannot convert or a choice it does not know)
follow the same format through `ArgumentParser`, which every parser of the
package instantiates instead of `argparse.ArgumentParser`:

    error: jaxrl-lm bench envs: argument --steps: invalid int value: 'x' (see jaxrl-lm bench envs --help)

SIGTERM (a SLURM preemption, `kill`) during a command raises `Terminated`
(`sigterm_unwinds`, set by `jaxrl_lm.cli.main`): the command's `finally`
blocks run, so a run finishes its pending checkpoint, closes metrics.jsonl and
releases its lock, and `jaxrl-lm` exits with status 143 (128 + 15).

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


# -- SIGTERM -----------------------------------------------------------------

SIGTERM_STATUS = 128 + signal.SIGTERM  # 143, what a shell reports for a SIGTERMed job


class Terminated(BaseException):
    """SIGTERM arrived (SLURM preemption or time limit, `kill`, `scancel`).
    Raised in the main thread wherever it is, a BaseException like
    KeyboardInterrupt, so `except Exception` does not catch it while every
    `finally` and `with` on the way out runs."""


_deferring = 0  # open `sigterm_deferred` blocks
_pending = False  # a SIGTERM arrived inside one of them


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A block that SIGTERM does not interrupt: `Terminated` is raised when
    it ends instead (taking or removing a lock is never left half done)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _pending and not _deferring:
        _pending = False
        raise Terminated(f"signal {signal.SIGTERM.value} (SIGTERM)")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread
    instead of ending the process on the spot, so the job's cleanup runs: a
    pending asynchronous checkpoint is finished (`RunFiles` closes the
    checkpointer), metrics.jsonl is closed, the run directory's lock removed.
    Further SIGTERMs are ignored while that cleanup runs (SLURM follows with
    SIGKILL after its KillWait). The previous handler is restored on exit. A
    no-op outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _pending
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _deferring:
            _pending = True
            return
        raise Terminated(f"signal {signum} (SIGTERM)")

    global _pending
    _pending = False
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        _pending = False
