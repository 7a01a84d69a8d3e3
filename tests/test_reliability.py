"""Nothing lost, nothing silent (docs/reliability.md), end to end:

- each kind of damage to the newest checkpoint, then two resumes in a row:
  both succeed and end bit-identical (params, metrics) to the clean run;
- `jaxrl-lm train --resume` under a changed config: refused before anything
  is written (exit 2, the fields named), or accepted with
  --allow-config-change, where arrays of another dtype are still an error;
- the run directory lock: a second job refused, a SIGKILLed job's stale lock
  taken over, the lock gone after a normal run and after an exception;
- `--out` checks: exit 2, one `error:` line, no traceback, nothing written.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.train import sft, trainer
from jaxrl_lm.train.logging import is_timing, read_metrics
from jaxrl_lm.train.run_lock import LOCK_NAME
from tests.test_train_checkpoint import CORRUPTIONS, corrupt
from tests.test_train_engine import toy_model
from tests.test_train_sft import tiny_cfg, toy_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", os.path.join(ROOT, "launch", "configs", "tiny.yaml"),
        "--train.steps", "4", "--train.ckpt_every", "2", "--train.batch_size", "8",
        "--train.max_len", "24", "--optim.warmup_steps", "1", "--train.progress", "false"]


def same_metrics(a, b):
    def strip(rows):
        return [{k: v for k, v in r.items() if not is_timing(k)} for r in rows]

    assert len(a) == len(b) > 0
    assert strip(a) == strip(b)


def snapshot(run):
    """path -> sha256 of every file under run."""
    out = {}
    for root, _, names in os.walk(run):
        for n in names:
            path = os.path.join(root, n)
            with open(path, "rb") as f:
                out[os.path.relpath(path, run)] = hashlib.sha256(f.read()).hexdigest()
    return out


# -- corrupt newest checkpoint -> two resumes (in-process, toy model) ----------

def toy_run(run, resume):
    cfg = tiny_cfg(mesh=(8, 1, 1), steps=6, ckpt_every=2, micro_batches=1)
    res = sft.train_sft(cfg, run, model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8),
                        resume=resume)
    return res, [np.asarray(x) for x in jax.tree.leaves(res.state)]


@pytest.fixture(scope="module")
def clean_toy_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("toy") / "clean")
    _, leaves = toy_run(run, False)
    return run, leaves, read_metrics(run)


# tensorstore reports its failed reads of the damaged files once more, from a
# closed event loop, after orbax has raised them
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_newest_checkpoint_then_two_resumes_match_the_clean_run(clean_toy_run, tmp_path,
                                                                         kind):
    clean, want, rows = clean_toy_run
    run = str(tmp_path / "run")
    shutil.copytree(clean, run)
    corrupt(os.path.join(run, "checkpoints", "6"), kind)
    with pytest.warns(RuntimeWarning, match=r"checkpoint 6 .* corrupt .*moved to .*6\.corrupt"):
        res, got = toy_run(run, True)
    assert res.resumed_from == 4  # steps 5 and 6 replayed, checkpoint 6 written again
    res2, got2 = toy_run(run, True)
    assert res2.resumed_from == 6
    for leaves in (got, got2):
        assert len(leaves) == len(want) > 5
        for a, b in zip(leaves, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    same_metrics(read_metrics(run), rows)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4", "6", "6.corrupt"]


# -- jaxrl-lm train (in-process): the tiny default policy, 4 SFT steps ---------

def train(out, capsys, *extra):
    code = cli_main(["train", *TINY, "--out", out, *extra])
    out_, err = capsys.readouterr()
    return code, out_, err


def one_error_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def clean_cli_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("cli") / "clean")
    assert cli_main(["train", *TINY, "--out", run]) == 0
    return run


@pytest.mark.slow
def test_resume_under_a_changed_config(clean_cli_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(clean_cli_run, run)
    before = snapshot(run)

    code, _, err = train(run, capsys, "--resume", "--model.param_dtype", "bfloat16")
    assert code == 2
    line = one_error_line(err)
    assert "checkpoint 4 " in line and "written under a different config: " \
        "model.param_dtype: 'float32' -> 'bfloat16'. " in line and "--allow-config-change" in line
    assert snapshot(run) == before  # nothing overwritten

    # allowed, but the state's arrays are float32 there: still an error, naming them
    code, _, err = train(run, capsys, "--resume", "--model.param_dtype", "bfloat16",
                         "--allow-config-change")
    assert code == 2
    line = one_error_line(err)
    assert "(it is intact, not corrupt): params.embed.value: float32[128,128] there, " \
        "bfloat16[128,128] here" in line
    assert snapshot(run) == before

    code, _, err = train(run, capsys, "--resume", "--train.steps", "6")
    assert code == 2 and "train.steps: 4 -> 6. " in one_error_line(err)
    assert snapshot(run) == before

    # fields that cannot change the state need no flag (the check `train` makes first)
    from jaxrl_lm.config import load_config
    from jaxrl_lm.train.run_dir import check_resume

    check_resume(load_config(TINY[1], [*TINY[2:], "--train.log_every", "3", "--train.progress",
                                       "true", "--train.keep_checkpoints", "5",
                                       "--eval.episodes", "9"]), run)

    # a run extended on purpose
    with pytest.warns(RuntimeWarning, match=r"changed config .*train\.steps: 4 -> 6"):
        code, out, _ = train(run, capsys, "--resume", "--train.steps", "6",
                             "--optim.warmup_steps", "1", "--allow-config-change")
    assert code == 0
    assert json.loads(out.splitlines()[-1])["resumed_from"] == 4
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4", "6"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_cli_resume_twice_after_a_truncated_data_file(clean_cli_run, tmp_path, capsys):
    """The issue's reproduction: the newest checkpoint's largest data file cut
    short, then `--resume` twice (it used to fail with StepAlreadyExistsError
    on every try)."""
    run = str(tmp_path / "run")
    shutil.copytree(clean_cli_run, run)
    shutil.rmtree(os.path.join(run, "hf"))
    step4 = os.path.join(run, "checkpoints", "4")
    files = [os.path.join(r, n) for r, _, ns in os.walk(step4) for n in ns]
    victim = max(files, key=os.path.getsize)
    os.truncate(victim, os.path.getsize(victim) // 2)
    for resumed_from in (2, 4):
        code, out, _ = train(run, capsys, "--resume")
        assert code == 0
        assert json.loads(out.splitlines()[-1])["resumed_from"] == resumed_from
        with open(os.path.join(run, "hf", "model.safetensors"), "rb") as f, \
                open(os.path.join(clean_cli_run, "hf", "model.safetensors"), "rb") as g:
            assert f.read() == g.read()
        same_metrics(read_metrics(run), read_metrics(clean_cli_run))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4", "4.corrupt"]


KILLED_HOLDER = """
import os, signal, sys
from jaxrl_lm.train.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_lock_is_gone_after_a_run_and_a_sigkilled_jobs_lock_is_taken_over(clean_cli_run,
                                                                           tmp_path, capsys):
    assert sorted(os.listdir(clean_cli_run)) == ["checkpoints", "config.yaml", "events", "hf",
                                                 "metrics.jsonl", "plots"]
    run = str(tmp_path / "run")
    shutil.copytree(clean_cli_run, run)
    r = subprocess.run([sys.executable, "-c", KILLED_HOLDER, run], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    with open(os.path.join(run, LOCK_NAME)) as f:
        lock = json.load(f)
    assert lock["host"] == socket.gethostname() and isinstance(lock["pid"], int)

    with pytest.warns(RuntimeWarning, match=rf"stale lock \(pid {lock['pid']} .*: process "
                                            rf"{lock['pid']} is not running"):
        code, out, _ = train(run, capsys, "--resume")
    assert code == 0 and json.loads(out.splitlines()[-1])["resumed_from"] == 4
    assert not os.path.exists(os.path.join(run, LOCK_NAME))


HOLDER = """
import sys, time
from jaxrl_lm.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_second_job_is_refused_naming_the_first(tmp_path, capsys):
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = train(run, capsys)
        assert code == 2
        line = one_error_line(err)
        assert line.startswith(f"error: --out {run}: in use by another job (pid {holder.pid} "
                               f"on host {socket.gethostname()}, started ")
        assert os.listdir(run) == [LOCK_NAME]  # nothing written, the lock still the holder's
        with open(os.path.join(run, LOCK_NAME)) as f:
            assert json.load(f)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_after_an_exception(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        assert os.path.exists(os.path.join(run, LOCK_NAME))  # held while the job runs
        raise RuntimeError("boom")

    run = str(tmp_path / "new" / "run")
    monkeypatch.setattr(trainer, "run_sft", boom)
    with pytest.raises(RuntimeError, match="boom"):
        cli_main(["train", *TINY, "--out", run])
    assert os.listdir(tmp_path) == []  # the lock and the empty folders it made are gone


def _unwritable(tmp_path):
    """An --out this process cannot create, and the reason the error gives."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").mkdir()
    except OSError:
        return str(d / "run"), "is not writable (permission denied)"
    # root writes in any folder; sysfs refuses new folders even to root
    (d / "probe").rmdir()
    d.chmod(0o755)
    d.rmdir()
    try:
        os.mkdir("/sys/jaxrl_lm_probe")
    except OSError:
        return "/sys/jaxrl_lm_run", "cannot create the folder"
    os.rmdir("/sys/jaxrl_lm_probe")
    pytest.skip("no folder here refuses this user")


@pytest.mark.parametrize("case", ["file", "under a file", "unwritable", "existing run"])
def test_out_checks(tmp_path, capsys, case):
    (tmp_path / "f").write_text("x")
    if case == "existing run":
        os.makedirs(tmp_path / "old" / "checkpoints" / "2")
    out, want = {
        "file": (str(tmp_path / "f"), "is a file, not a directory"),
        "under a file": (str(tmp_path / "f" / "run"),
                         f"{tmp_path / 'f'} is a file, so no folder can be made under it"),
        "unwritable": (None, None),
        "existing run": (str(tmp_path / "old"), "already holds a run (checkpoints at steps 2 in "),
    }[case]
    if case == "unwritable":
        out, want = _unwritable(tmp_path)
    before = snapshot(str(tmp_path)), sorted(os.listdir(tmp_path))
    code, _, err = train(out, capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: --out {out}: ") and want in line
    assert (snapshot(str(tmp_path)), sorted(os.listdir(tmp_path))) == before
