"""metrics.jsonl stays strict JSON: non-finite values are written as null and
named under "nonfinite", read back, redrawn, and made strict on resume."""

import json
import math
import os

import numpy as np

from jaxrl_lm.train.logging import RunLogger, plot_run, read_metrics, strict_row


def strict_loads(line: str):
    """json.loads that refuses NaN / Infinity / -Infinity, as RFC 8259 does."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_null_and_named(tmp_path):
    run = str(tmp_path)
    log = RunLogger(run, "", total_steps=3, progress=False)
    row = log.log(1, {"loss": np.float32(np.nan), "grad_norm": np.float32(np.inf),
                      "kl": -np.inf, "finite": np.float32(0.0), "skipped": np.int32(1)})
    log.log(2, {"loss": np.float32(1.5), "grad_norm": np.float32(0.25), "kl": 0.0,
                "finite": np.float32(1.0), "skipped": np.int32(1)})
    log.close(plots=False)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        lines = [strict_loads(line) for line in f]
    want = {"step": 1, "loss": None, "grad_norm": None, "kl": None, "finite": 0.0, "skipped": 1,
            "nonfinite": {"loss": "nan", "grad_norm": "inf", "kl": "-inf"}}
    assert lines[0] == want and row == want  # what the loop gets back is strict too
    assert lines[1] == {"step": 2, "loss": 1.5, "grad_norm": 0.25, "kl": 0.0, "finite": 1.0,
                        "skipped": 1}  # no "nonfinite" key when all are finite
    assert read_metrics(run) == lines
    # nothing lost: the strings give the values back
    back = {k: float(v) for k, v in lines[0]["nonfinite"].items()}
    assert math.isnan(back["loss"]) and back["grad_norm"] == math.inf and back["kl"] == -math.inf
    # the curves are drawn from the finite points; the NaN step is marked, not an error
    paths = plot_run(run)
    assert os.path.join(run, "plots", "loss.png") in paths
    assert os.path.join(run, "plots", "grad_norm.png") in paths


def test_a_metric_only_ever_non_finite_still_gets_a_plot(tmp_path):
    log = RunLogger(str(tmp_path), "", total_steps=2, progress=False)
    for step in (1, 2):
        log.log(step, {"loss": np.float32(np.nan)})
    log.close()  # draws the plots
    assert os.path.exists(tmp_path / "plots" / "loss.png")


def test_resume_rewrites_an_old_file_strictly(tmp_path):
    """Files written before this change hold `Infinity` tokens (json.dumps'
    default); resuming rewrites the kept lines strictly, drops the redone ones."""
    path = tmp_path / "metrics.jsonl"
    old = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": float("inf"), "kl": -float("inf")},
           {"step": 3, "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert "Infinity" in path.read_text()
    log = RunLogger(str(tmp_path), "", total_steps=4, start_step=2, progress=False)
    log.log(3, {"loss": np.float32(0.5)})
    log.close(plots=False)
    rows = [strict_loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 2.0},
                    {"step": 2, "loss": None, "kl": None,
                     "nonfinite": {"loss": "inf", "kl": "-inf"}},
                    {"step": 3, "loss": 0.5}]


def test_strict_row_merges_and_leaves_finite_rows_alone():
    assert strict_row({"step": 1, "a": 1.0, "b": 2}) == {"step": 1, "a": 1.0, "b": 2}
    # a row already made strict, with one more non-finite value: the names merge
    got = strict_row({"step": 2, "a": None, "b": float("nan"), "nonfinite": {"a": "inf"}})
    assert got == {"step": 2, "a": None, "b": None, "nonfinite": {"a": "inf", "b": "nan"}}
