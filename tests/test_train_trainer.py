"""`jaxrl-lm train --resume` end to end on the embedded default policy: a run
that lost its newest checkpoint resumes from the one before, redoes the lost
steps, and exports the same bytes as the uninterrupted run."""

import json
import os
import shutil

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.train.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config", os.path.join(ROOT, "launch", "configs", "tiny.yaml"),
        "--train.steps", "4", "--train.ckpt_every", "2", "--train.batch_size", "8",
        "--train.max_len", "24", "--optim.warmup_steps", "1", "--train.progress", "false"]


def train(out, capsys, *extra):
    assert cli_main(["train", *ARGS, "--out", out, *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_resume_flag_continues_from_latest_intact_checkpoint(tmp_path, capsys):
    full, run = str(tmp_path / "full"), str(tmp_path / "run")
    summary = train(full, capsys, "--resume")  # --resume on an empty dir starts fresh
    assert summary["resumed_from"] == 0 and summary["step"] == 4
    assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["2", "4"]

    # the same run as if it had died after writing checkpoint 2 and logging step 3
    shutil.copytree(full, run)
    shutil.rmtree(os.path.join(run, "checkpoints", "4"))
    shutil.rmtree(os.path.join(run, "hf"))
    rows = read_metrics(run)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:3])

    summary = train(run, capsys, "--resume")
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    got = read_metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["loss"] for r in got] == [r["loss"] for r in rows]  # steps 3, 4 redone exactly
    assert read(os.path.join(run, "hf", "model.safetensors")) == \
        read(os.path.join(full, "hf", "model.safetensors"))


def test_top_level_help_lists_every_command(capsys):
    from jaxrl_lm.cli import COMMANDS

    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in out, name  # one described line per command
    assert cli_main(["fit"]) == 2
    assert "unknown command 'fit'; choose one of bench, data, eval, paprika, plan, plot, train" in capsys.readouterr().err
