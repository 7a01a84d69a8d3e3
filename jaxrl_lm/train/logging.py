"""The run directory: config.yaml, metrics.jsonl, TensorBoard events, a live
progress bar, and PNG plots of the main curves.

    RUN_DIR/config.yaml      the resolved config
    RUN_DIR/metrics.jsonl    one JSON object per logged step, flushed as written
    RUN_DIR/events/          TensorBoard (tensorboardX) event files
    RUN_DIR/plots/*.png      main curves, drawn at the end or by `jaxrl-lm plot`

Only process 0 of a multi-process run writes.

metrics.jsonl is strict JSON (RFC 8259: no NaN / Infinity tokens). A metric
whose value is not finite is written as null and named under "nonfinite" with
its value as a string, so readers of the numbers need no special case and
nothing is lost (float() of the string gives the value back):

    {"step": 7, "loss": null, "update_norm": null, "finite": 0.0,
     "nonfinite": {"loss": "nan", "update_norm": "inf"}}

TensorBoard gets the values themselves; plots mark those steps in red.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any

import numpy as np

# Curves drawn when present, in this order; anything with "reward" or "win" too.
MAIN_CURVES = ("loss", "reward", "env_return", "action_coverage", "invalid_rate", "grad_norm", "lr",
               "tokens_per_s", "kl", "entropy", "skipped")


def is_timing(key: str) -> bool:
    """A wall-clock metric (`tokens_per_s`, `time/<phase>_s`): the only kind that
    differs between two runs that train the same."""
    return key == "tokens_per_s" or key.startswith("time/")


def _scalar(v: Any) -> float | int | None:
    """A one-element value as a Python number (bools as 0/1); None otherwise."""
    a = np.asarray(v)
    if a.size != 1:
        return None
    x = a.reshape(()).item()
    return int(x) if isinstance(x, bool) else x


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with each non-finite float set to None and listed, as "nan" /
    "inf" / "-inf", in row["nonfinite"] (merged with the names already there)."""
    out, bad = {}, dict(row.get("nonfinite") or {})
    for k, v in row.items():
        if k == "nonfinite":
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out[k], bad[k] = None, str(v)
        else:
            out[k] = v
    if bad:
        out["nonfinite"] = bad
    return out


def _line(row: dict[str, Any]) -> str:
    return json.dumps(strict_row(row), allow_nan=False) + "\n"


def progress_info(row: dict) -> str:
    """`reward 0.5  loss 1.23  tok/s 4.5e+03` from a metrics row (what is present).

    RL rows may name the reward `reward_mean` etc.: the first `reward*` key counts.
    """
    reward = "reward" if "reward" in row else next(
        (k for k in sorted(row) if k.startswith("reward")), None)
    parts = [("reward", reward), ("loss", "loss"), ("tok/s", "tokens_per_s")]
    return "  ".join(f"{label} {row[k]:.4g}" for label, k in parts
                     if k in row and isinstance(row[k], (int, float)))


def read_metrics(run_dir: str) -> list[dict]:
    """All complete lines of RUN_DIR/metrics.jsonl (a torn last line is ignored)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


class RunLogger:
    """Writes one run directory. `log(step, metrics)`; `close()` draws plots.

    Args:
      run_dir: the run directory (created).
      config_yaml: the resolved config as YAML text.
      total_steps: for the progress bar.
      start_step: on resume, metric lines after it are dropped (they are redone).
      progress: show a rich progress bar.
      enabled: False on processes other than 0.
      console: a rich Console for the progress bar (default: the terminal).
    """

    def __init__(self, run_dir: str, config_yaml: str, *, total_steps: int, start_step: int = 0,
                 progress: bool = True, enabled: bool = True, console: Any = None):
        self.run_dir, self.enabled = run_dir, enabled
        self._progress = self._task = self._tb = self._file = None
        self._last_time = time.perf_counter()  # every process times tokens/s
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            f.write(config_yaml)
        path = os.path.join(run_dir, "metrics.jsonl")
        kept = []
        if start_step > 0 and os.path.exists(path):
            kept = [m for m in read_metrics(run_dir) if m.get("step", 0) <= start_step]
        with open(path, "w") as f:  # rewrite: drop steps that will be redone
            f.writelines(_line(m) for m in kept)  # older files: NaN/Infinity made strict
        self._file = open(path, "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(run_dir, "events"), purge_step=start_step + 1)
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                      console=console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step,
                                                 info="")

    def log(self, step: int, metrics: dict[str, Any], *, tokens: int | None = None) -> dict:
        """Record one step; `tokens` processed since the last call gives tokens/s."""
        now = time.perf_counter()
        raw: dict[str, Any] = {"step": int(step)}
        for k, v in metrics.items():
            x = _scalar(v)
            if x is not None:
                raw[k] = x
        if tokens is not None:
            raw["tokens_per_s"] = tokens / max(now - self._last_time, 1e-9)
        self._last_time = now
        row = strict_row(raw)
        if not self.enabled:
            return row
        self._file.write(_line(row))
        self._file.flush()  # a killed run keeps every line it logged
        for k, v in raw.items():  # TensorBoard shows NaN / inf as they are
            if k != "step":
                self._tb.add_scalar(k, v, step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=progress_info(row))
        return row

    def close(self, *, plots: bool = True) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        self._file.close()
        self._tb.close()
        if plots:
            plot_run(self.run_dir)


def plot_run(run_dir: str) -> list[str]:
    """Draw RUN_DIR/plots/<metric>.png for the main curves; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    keys = [k for k in MAIN_CURVES if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r if k not in keys and (
        "reward" in k or "win" in k or (k.startswith("eval/") and k.endswith(("/return",
                                                                            "/score"))))})
    out_dir = os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        bad = [r["step"] for r in rows if k in (r.get("nonfinite") or {})]
        if not pts and not bad:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if pts:
            ax.plot(*zip(*pts), lw=1.2)
        for i, at in enumerate(bad):  # steps where the value was NaN / inf
            ax.axvline(at, color="tab:red", lw=0.8, alpha=0.5,
                       label=f"non-finite ({len(bad)})" if i == 0 else None)
        if bad:
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        ax.set_title(f"{k} ({os.path.basename(os.path.abspath(run_dir))})", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        # metric names may hold "/" (TensorBoard groups, e.g. reward/answer): one file each
        path = os.path.join(out_dir, f"{re.sub(r'[^A-Za-z0-9_.@-]', '_', k)}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
