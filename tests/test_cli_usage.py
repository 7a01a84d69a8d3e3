"""A malformed command line at every `jaxrl-lm` command and benchmark (an
unknown flag, a missing required flag or argument, a word for a number or a
choice; issue 27): exit status 2, exactly one stderr line `error: jaxrl-lm
<prog>: ... (see jaxrl-lm <prog> --help)`, no usage text, no traceback, nothing
written. The bad values and files are tests/test_config_bad.py's table."""

from __future__ import annotations

import os

import pytest

from jaxrl_lm.cli import main
from tests.bad_input import ROOT, E, T, U, files, one_error_line  # noqa: F401 - files: a fixture
from tests.test_config_bad import CASES


# The command line itself, at every command: an unknown flag, a missing required
# flag or argument, a value that is not a number (or not a choice). (kind, argv,
# the whole error line); run in the test's folder, where nothing may appear.
USAGE_CASES = [
    ("train without --out", ["train", "--train.steps", "3"],
     U("train", "the following arguments are required: --out")),
    ("train flag given a value", T("--resume=yes"),
     U("train", "argument --resume: ignored explicit argument 'yes'")),
    ("train unknown flag", T("--bogus", "1"), "error: override --bogus: expected the form "
                                             "--section.field[.key ...]"),
    ("train non-numeric field", T("--train.steps", "x"),
     "error: train.steps='x': expected a value of type int"),
    ("eval without --env", ["eval", "--checkpoint", "{d}/base"],
     U("eval", "the following arguments are required: --env")),
    ("eval unknown flag", E("--bogus"), U("eval", "unrecognized arguments: --bogus")),
    ("eval non-numeric episodes", E("--episodes", "x"),
     U("eval", "argument --episodes: invalid int value: 'x'")),
    ("eval data without --checkpoint", ["eval", "--data", "held-out"],
     U("eval --data", "the following arguments are required: --checkpoint")),
    ("eval data non-numeric samples", ["eval", "--checkpoint", "{d}/base", "--data", "held-out",
                                       "--samples", "x"],
     U("eval --data", "argument --samples: invalid int value: 'x'")),
    ("eval data unknown flag", ["eval", "--checkpoint", "{d}/base", "--data", "held-out",
                                "--bogus"], U("eval --data", "unrecognized arguments: --bogus")),
    ("plot without a run", ["plot"], U("plot", "the following arguments are required: run_dir")),
    ("plot unknown flag", ["plot", "{run}", "--bogus"], U("plot", "unrecognized arguments: --bogus")),
    ("data without task and --out", ["data"],
     U("data", "the following arguments are required: task, --out")),
    ("data unknown task", ["data", "nosuch", "--out", "{run}/x.jsonl"],
     U("data", "argument task: invalid choice: 'nosuch' (choose from 'addition', 'countdown')")),
    ("data non-numeric rows", ["data", "addition", "--out", "{run}/x.jsonl", "--rows", "x"],
     U("data", "argument --rows: invalid int value: 'x'")),
    ("data unknown flag", ["data", "addition", "--out", "{run}/x.jsonl", "--bogus"],
     U("data", "unrecognized arguments: --bogus")),
    ("plan non-numeric devices", ["plan", "--devices", "x"],
     U("plan", "argument --devices: invalid int value: 'x'")),
    ("plan non-numeric memory", ["plan", "--memory-gib", "lots"],
     U("plan", "argument --memory-gib: invalid float value: 'lots'")),
    ("plan unknown flag", ["plan", "--bogus", "1"],
     "error: override --bogus: expected the form --section.field[.key ...]"),
    ("paprika without --config", ["paprika", "--out", "{run}"],
     U("paprika", "the following arguments are required: --config")),
    ("paprika flag given a value", ["paprika", "--config", "{d}/p.yaml", "--out", "{run}",
                                    "--resume=yes"],
     U("paprika", "argument --resume: ignored explicit argument 'yes'")),
    ("bench envs non-numeric batch", ["bench", "envs", "--batch", "x"],
     U("bench envs", "argument --batch: invalid value 'x': expected comma-separated ints")),
    ("bench envs batch list with a word", ["bench", "envs", "--batch", "1,two"],
     U("bench envs", "argument --batch: invalid value '1,two': expected comma-separated ints")),
    ("bench envs non-numeric steps", ["bench", "envs", "--steps", "x"],
     U("bench envs", "argument --steps: invalid int value: 'x'")),
    ("bench envs unknown flag", ["bench", "envs", "--bogus"],
     U("bench envs", "unrecognized arguments: --bogus")),
    ("bench envs unknown choice", ["bench", "envs", "--rng", "nope"],
     U("bench envs", "argument --rng: invalid choice: 'nope' (choose from 'hash', 'threefry')")),
    ("bench sampler non-numeric batch", ["bench", "sampler", "--batch", "x"],
     U("bench sampler", "argument --batch: invalid int value: 'x'")),
    ("bench logprobs-memory non-numeric seq", ["bench", "logprobs-memory", "--seq", "x"],
     U("bench logprobs-memory", "argument --seq: invalid int value: 'x'")),
    ("bench logprobs-memory non-numeric chunk table",
     ["bench", "logprobs-memory", "--chunk-table", "x"],
     U("bench logprobs-memory", "argument --chunk-table: invalid value 'x': expected "
                                "comma-separated ints")),
    ("bench rollout non-numeric new", ["bench", "rollout", "--new", "x"],
     U("bench rollout", "argument --new: invalid int value: 'x'")),
    ("bench grpo-step non-numeric prompts", ["bench", "grpo-step", "--prompts", "x"],
     U("bench grpo-step", "argument --prompts: invalid int value: 'x'")),
    ("bench data-grpo non-numeric lr", ["bench", "data-grpo", "--lr", "fast"],
     U("bench data-grpo", "argument --lr: invalid float value: 'fast'")),
    ("bench lora-memory non-numeric rank", ["bench", "lora-memory", "--rank", "x"],
     U("bench lora-memory", "argument --rank: invalid int value: 'x'")),
    ("bench lora-memory unknown flag", ["bench", "lora-memory", "--bogus"],
     U("bench lora-memory", "unrecognized arguments: --bogus")),
    ("bench paprika-generate unknown flag", ["bench", "paprika-generate", "--bogus"],
     U("bench paprika-generate", "unrecognized arguments: --bogus")),
]


def test_the_usage_table_covers_every_command():
    from jaxrl_lm.cli import BENCHES, COMMANDS

    kinds = [k for k, _, _ in USAGE_CASES]
    assert len(kinds) == len(set(kinds)) and not set(kinds) & {k for k, _, _ in CASES}
    assert {a[0] for _, a, _ in USAGE_CASES} == set(COMMANDS)
    assert {a[1] for _, a, _ in USAGE_CASES if a[0] == "bench"} == set(BENCHES)


@pytest.mark.parametrize("kind,argv,line", USAGE_CASES, ids=[k for k, _, _ in USAGE_CASES])
def test_usage_error_isone_error_line(files, tmp_path, monkeypatch, capsys, kind, argv, line):
    """Exit status 2 and only `error: ...` on stderr, naming the flag or value (no
    usage text, no traceback), and nothing written: the test's folder stays empty."""
    monkeypatch.chdir(tmp_path)
    fill = lambda s: s.replace("{d}", str(files)).replace("{run}", str(tmp_path / "run"))  # noqa: E731
    assert main([fill(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert one_error_line(err, "") == fill(line) and out == ""
    assert os.listdir(tmp_path) == []


def test_every_parser_of_the_package_printsone_error_line():
    """Every argparse parser in jaxrl_lm is `cli_args.ArgumentParser` (a new
    command's parser cannot fall back to argparse's usage text)."""
    plain = [f"{path.relative_to(ROOT)}:{n}" for path in sorted((ROOT / "jaxrl_lm").rglob("*.py"))
             for n, text in enumerate(path.read_text().splitlines(), 1)
             if "argparse.ArgumentParser(" in text]
    assert plain == []
