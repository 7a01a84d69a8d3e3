"""Scripted-player SFT data: every example is a real render of a reachable
state plus a legal move as `ACTION=<cell>\\n`; `jaxrl-lm train` runs on it."""

import json
import os
import re

import jax
import numpy as np
from flax import nnx

from envs.text import parse_text
from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import load_config
from jaxrl_lm.train.run import build_data, build_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "launch", "configs", "tictactoe_sft.yaml")


def test_examples_are_renders_with_legal_answers():
    cfg = load_config(PRESET, ["--train.batch_size", "32"])
    _, tok = build_policy(cfg)
    data_fn = build_data(cfg, tok)
    batch = data_fn(0, jax.random.PRNGKey(3))
    again = data_fn(0, jax.random.PRNGKey(3))
    assert all(np.array_equal(batch[k], again[k]) for k in batch)  # pure in the key
    env = data_fn.text.env
    boards = set()
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"]):
        idx = np.flatnonzero(mask)
        assert idx.size and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # one contiguous answer
        prompt, answer = tok.decode(tokens[: idx[0]].tolist()), tok.decode(tokens[idx].tolist())
        assert prompt.startswith("Tic-tac-toe") and prompt.endswith("Answer with ACTION=<cell>.\n")
        assert answer.endswith("\n") and answer.count("ACTION=") == 1
        action, valid = parse_text(env, answer)
        legal = re.search(r"Legal: ([0-9 ]+)\n", prompt).group(1).split()
        assert valid and env.action_strings()[action] in legal
        boards.add(prompt)
    assert len(boards) > 8  # scripted pre-moves give varied positions


def test_cli_trains_on_env_data(tmp_path):
    out = str(tmp_path / "run")
    rc = cli_main(["train", "--config", PRESET, "--out", out, "--train.steps", "3",
                   "--optim.warmup_steps", "1", "--train.batch_size", "8", "--train.micro_batches", "1",
                   "--train.progress", "false"])
    assert rc == 0
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["completion_tokens"] == 8 * 9 for r in rows)
    assert os.path.exists(os.path.join(out, "plots", "loss.png"))
    # the trained policy is exported as an HF folder that loads back
    from jaxrl_lm.models import hf

    model, _ = hf.load_hf(os.path.join(out, "hf"))
    fresh, _ = build_policy(load_config(PRESET))
    got, init = jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(fresh, nnx.Param))
    assert len(got) == len(init) and not all(np.array_equal(a, b) for a, b in zip(got, init))
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["3"]
