"""What the bad-input tables share (tests/test_config_bad.py, the values and
files; tests/test_cli_usage.py, the command lines): argv builders, the
module-scoped `files` fixture of bad HF folders and YAML files (each with one
thing wrong), and the one-error-line check."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TTT = str(ROOT / "launch" / "configs" / "tictactoe.yaml")  # an RL preset on an env


def T(*args: str) -> list[str]:
    """`jaxrl-lm train` into the test's run directory."""
    return ["train", "--out", "{run}", *args]


def H(folder: str) -> list[str]:
    """`jaxrl-lm train` on an HF folder of the fixture."""
    return T("--model.source", "hf", "--model.path", "{d}/" + folder)


def E(*args: str) -> list[str]:
    """`jaxrl-lm eval` of the fixture's good HF folder."""
    return ["eval", "--checkpoint", "{d}/base", "--env", "tictactoe", *args]


def U(prog: str, message: str) -> str:
    """The one line of argparse's usage errors (`cli_args.ArgumentParser`)."""
    return f"error: jaxrl-lm {prog}: {message} (see jaxrl-lm {prog} --help)"


def _edit_json(folder: pathlib.Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        del cfg[k]
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(folder: pathlib.Path, fn) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def write_folders(d: pathlib.Path) -> None:
    """The bad files and folders the table names, each one thing wrong."""
    from jaxrl_lm.models import default_policy, save_hf

    model, tok = default_policy(0)
    base = d / "base"
    save_hf(model, tok, base)

    def variant(name: str) -> pathlib.Path:
        shutil.copytree(base, d / name)
        return d / name

    (variant("no_config") / "config.json").unlink()
    (variant("bad_json") / "config.json").write_text('{"model_type": "llama",')
    (variant("latin1_json") / "config.json").write_bytes('{"model_type": "café"}'.encode("latin-1"))
    (variant("list_json") / "config.json").write_text("[1, 2]")
    _edit_json(variant("phi3"), model_type="phi3")
    _edit_json(variant("no_vocab"), vocab_size=None)
    _edit_json(variant("str_hidden"), hidden_size="128")
    (variant("no_weights") / "model.safetensors").unlink()
    weights = (base / "model.safetensors").read_bytes()
    (variant("truncated") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (variant("garbage") / "model.safetensors").write_bytes(b"\x10\x00 not a header")
    key = "model.layers.1.mlp.up_proj.weight"
    _edit_tensors(variant("wrong_shape"), lambda t: t.update({key: t[key].T.copy()}))
    _edit_tensors(variant("missing_tensor"), lambda t: t.pop("model.norm.weight"))
    _edit_tensors(variant("extra_tensor"), lambda t: t.update(extra=t["model.norm.weight"]))
    no_tokenizer = variant("no_tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / f).unlink()
    (variant("bad_index") / "model.safetensors.index.json").write_text("{bad")
    shard = variant("missing_shard")
    (shard / "model.safetensors").rename(shard / "model-00001-of-00002.safetensors")
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    (variant("bad_tokenizer") / "tokenizer.json").write_text('{"version": ')
    run = d / "latin1_run"
    shutil.copytree(base, run / "hf")
    (run / "config.yaml").write_bytes("env:\n  name: café\n".encode("latin-1"))
    (d / "dup.yaml").write_text("optim:\n  lr: 0.001\n  lr: 0.002\n")
    (d / "dup_section.yaml").write_text("train:\n  steps: 3\ntrain:\n  steps: 4\n")
    (d / "latin1.yaml").write_bytes("env:\n  name: café\n".encode("latin-1"))
    (d / "broken.yaml").write_text("optim: {lr: 0.1\n")
    (d / "list.yaml").write_text("- optim\n- train\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("bad")
    write_folders(d)
    return d


def one_error_line(err: str, message: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    return lines[0]
