"""Outer loop and run directory: metrics.jsonl (valid, flushed), TensorBoard
events, plots, `jaxrl-lm plot`, resume in-process, SFT loss vs numpy, and
skipped (non-finite) steps in a row stopping a run, in-process and through
`jaxrl-lm train` (exit 3, no hf/)."""

import io
import json
import os
import re

import jax
import numpy as np
import pytest

from jaxrl_lm import config as C
from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.train import mesh, sft
from jaxrl_lm.train.engine import NonFiniteError
from jaxrl_lm.train.logging import RunLogger, read_metrics
from tests.test_train_engine import T, V, toy_model


def toy_data(batch_size):
    def data_fn(step, key):
        k1, k2 = jax.random.split(key)
        tokens = np.asarray(jax.random.randint(k1, (batch_size, T), 0, V), np.int32)
        lengths = np.asarray(jax.random.randint(k2, (batch_size,), 3, T + 1))
        mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
        mask[:, :2] = 0  # a two-token "prompt"
        return {"tokens": tokens, "loss_mask": mask}
    return data_fn


def tiny_cfg(mesh=(2, 2, 2), **train):
    base = dict(steps=6, batch_size=8, micro_batches=2, max_len=T, ckpt_every=3, log_every=1,
                progress=False)
    base.update(train)
    return C.from_dict({"train": base, "optim": {"lr": 0.05, "warmup_steps": 1},
                        "mesh": dict(zip(("data", "fsdp", "tensor"), mesh))})


def test_logger_flushes_each_line(tmp_path):
    log = RunLogger(str(tmp_path), "a: 1\n", total_steps=3, progress=False)
    log.log(1, {"loss": np.float32(2.5), "vec": np.zeros(3), "ok": np.bool_(True)}, tokens=100)
    rows = read_metrics(str(tmp_path))  # read while the file is still open
    assert rows[0]["step"] == 1 and rows[0]["loss"] == 2.5 and rows[0]["ok"] == 1
    assert "vec" not in rows[0] and rows[0]["tokens_per_s"] > 0
    log.close(plots=False)


def test_logger_on_other_processes_writes_nothing(tmp_path):
    log = RunLogger(str(tmp_path / "p1"), "a: 1\n", total_steps=3, enabled=False)
    row = log.log(1, {"loss": np.float32(2.5)}, tokens=10)
    log.close()
    assert row["loss"] == 2.5 and row["tokens_per_s"] > 0
    assert not (tmp_path / "p1").exists()


def test_progress_bar_shows_step_reward_loss_tokens_per_s(tmp_path):
    from rich.console import Console

    buf = io.StringIO()
    log = RunLogger(str(tmp_path), "", total_steps=10, progress=True,
                    console=Console(file=buf, width=160, force_terminal=False))
    log.log(3, {"loss": np.float32(1.25), "reward_mean": np.float32(0.5)}, tokens=1000)
    log.close(plots=False)
    out = buf.getvalue()
    assert re.search(r"step\s+3/10 ", out), out
    assert "reward 0.5  loss 1.25  tok/s " in out, out
    tok_s = float(re.search(r"tok/s (\S+)", out).group(1))
    assert tok_s == pytest.approx(read_metrics(str(tmp_path))[0]["tokens_per_s"], rel=1e-3)


def test_run_dir_contents_and_plot_command(tmp_path):
    run = str(tmp_path / "run")
    res = sft.train_sft(tiny_cfg(), run, model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8))
    assert int(res.state.step) == 6
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and "token_accuracy" in r and "tokens_per_s" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert C.load_config(os.path.join(run, "config.yaml")) == tiny_cfg()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "events")))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["3", "6"]
    for name in ("loss", "grad_norm", "lr", "tokens_per_s"):
        path = os.path.join(run, "plots", f"{name}.png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        os.remove(path)
    assert cli_main(["plot", run]) == 0
    assert os.path.exists(os.path.join(run, "plots", "loss.png"))
    assert cli_main(["plot", str(tmp_path / "nothing")]) == 2


def test_resume_in_process_drops_redone_lines(tmp_path):
    run = str(tmp_path / "run")
    full = sft.train_sft(tiny_cfg(), str(tmp_path / "full"), model=toy_model(), loss_fn=sft.sft_loss,
                      data_fn=toy_data(8))
    sft.train_sft(tiny_cfg(steps=6), run, model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8))
    # pretend the run died after step 4: checkpoint 3 is the newest intact one
    import shutil

    shutil.rmtree(os.path.join(run, "checkpoints", "6"))
    res = sft.train_sft(tiny_cfg(), run, model=toy_model(), loss_fn=sft.sft_loss, data_fn=toy_data(8),
                     resume=True)
    assert res.resumed_from == 3
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 7))
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(res.state.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sft_loss_matches_numpy():
    model = toy_model()
    batch = toy_data(4)(0, jax.random.PRNGKey(1))
    (s, d), m = sft.sft_loss(model, batch)
    logits = np.asarray(model(batch["tokens"][:, :-1]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tgt, mask = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
    nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(s), (nll * mask).sum(), rtol=1e-5)
    assert float(d) == mask.sum()


def test_pack_masks_only_answers():
    out = sft.pack([([1, 2], [3, 4]), ([5], [6, 7, 8, 9])], max_len=4, pad_id=0)
    assert out["tokens"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert out["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]


def poisoned(data_fn, bad_steps):
    """data_fn with a NaN in one loss_mask entry at the steps in bad_steps."""
    def wrapped(step, key):
        batch = dict(data_fn(step, key))
        if step in bad_steps:
            batch["loss_mask"] = batch["loss_mask"].copy()
            batch["loss_mask"][0, -1] = np.nan
        return batch
    return wrapped


def test_skipped_steps_in_a_row_stop_the_run(tmp_path):
    """Steps 3.. (1-based) are poisoned; with max_skipped_steps 3 the run stops
    after step 5, its metrics and checkpoints kept."""
    run = str(tmp_path / "run")
    cfg = tiny_cfg(steps=10, ckpt_every=2, max_skipped_steps=3)
    with pytest.raises(NonFiniteError) as err:
        sft.train_sft(cfg, run, model=toy_model(), data_fn=poisoned(toy_data(8), range(2, 10)))
    msg = str(err.value)
    assert msg.startswith("step 5: 3 optimizer steps in a row were skipped")
    assert "train.max_skipped_steps=3" in msg and "optim.lr" in msg and "rewards" in msg
    rows = read_metrics(run)
    assert [(r["step"], r["finite"], r["skipped"]) for r in rows] == [
        (1, 1.0, 0), (2, 1.0, 0), (3, 0.0, 1), (4, 0.0, 2), (5, 0.0, 3)]
    assert all(r["loss"] is None and r["nonfinite"]["loss"] == "nan" for r in rows[2:])
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4"]


def test_skipped_steps_not_in_a_row_let_the_run_finish(tmp_path):
    """Every other step poisoned: 5 skipped, never 2 in a row, limit 2."""
    run = str(tmp_path / "run")
    res = sft.train_sft(tiny_cfg(steps=10, max_skipped_steps=2), run, model=toy_model(),
                        data_fn=poisoned(toy_data(8), range(1, 10, 2)))
    assert int(res.state.step) == 10 and int(res.state.skipped) == 5
    assert [r["finite"] for r in read_metrics(run)] == [1.0, 0.0] * 5


@pytest.mark.slow
def test_cli_train_exits_3_without_export_when_steps_keep_failing(tmp_path, capsys, monkeypatch):
    """`jaxrl-lm train` (SFT on the sorting data, here poisoned from its
    second step on, as a corrupt data source would be): one `error:` line, exit
    status 3, the steps' metrics and checkpoints kept, no hf/ folder."""
    real = sft.sorting_data
    monkeypatch.setattr(sft, "sorting_data",
                        lambda *a, **kw: poisoned(real(*a, **kw), range(1, 100)))
    out = str(tmp_path / "run")
    argv = ["train", "--out", out, "--algo.name", "sft", "--train.steps", "6",
            "--train.batch_size", "8", "--train.max_len", "24", "--train.ckpt_every", "1",
            "--train.max_skipped_steps", "2", "--train.progress", "false"]
    assert cli_main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: step 3: 2 optimizer steps in a row"), err
    assert "hf" in err[0] and "not written" in err[0]
    assert not os.path.exists(os.path.join(out, "hf"))
    assert [r["finite"] for r in read_metrics(out)] == [1.0, 0.0, 0.0]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["1", "2", "3"]
