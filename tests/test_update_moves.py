"""experiments/update_moves.py (a script outside the package, loaded from its
file) on a tiny version of the main job: the
sampler's log-probs equal the trainer's on the parameters that sampled them,
and an update moves log-probs exactly when its learning rate is not zero."""

import importlib.util
import json
import os
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "update_moves.py"
_spec = importlib.util.spec_from_file_location("update_moves", SCRIPT)
update_moves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_moves)

TINY_SFT = os.path.join(os.path.dirname(update_moves.MAIN_CONFIG), "tiny.yaml")

TINY = ["--warmup.steps", "0", "--train.batch_size", "16", "--algo.group_size", "8",
        "--train.micro_batches", "1", "--rollout.max_new_tokens", "4",
        "--optim.warmup_steps", "2"]


def test_update_moves_tiny_main_job(tmp_path, capsys):
    assert update_moves.main(["--run", str(tmp_path), "--iterations", "1", "--json"] + TINY) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["iteration"], r["epoch"]) for r in rows] == [(1, 1), (1, 2)]  # algo.epochs 2
    first, second = rows
    assert first["tokens"] > 0 and first["mismatch"] < 1e-4 and second["mismatch"] is None
    # the lr warm-up starts at 0: the first update moves nothing; the second does
    # (the untrained policy's answers are invalid, so random legal moves play
    # and the games' outcomes differ within a group: non-zero advantages)
    assert first["max_move"] == 0.0
    assert second["max_move"] > 0 and second["max_move"] >= second["p99_move"] >= 0


def test_update_moves_rejects_bad_input(tmp_path, capsys):
    assert update_moves.main(["--run", str(tmp_path), "--iterations", "0"]) == 2
    assert update_moves.main(["--run", str(tmp_path), "--config", TINY_SFT]) == 2
    assert update_moves.main(["--run", str(tmp_path), "--optim.lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--iterations 0" in err and "algo.name='sft'" in err and "optim.lr" in err


def test_main_config_is_found_from_the_repo():
    assert os.path.isfile(update_moves.MAIN_CONFIG)
