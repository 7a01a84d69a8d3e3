"""Scripted-player SFT data: every example is a real render of a reachable
state plus a legal move as `ACTION=<cell>\\n`; `jaxrl-lm train` runs on it."""

import json
import os
import re

import jax
import numpy as np
from flax import nnx

from jaxrl_lm.envs.text import parse_text
from jaxrl_lm.cli import main as cli_main
from jaxrl_lm.config import load_config
from jaxrl_lm.train.trainer import build_data, build_policy

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


def _expected_data(extra=()):
    cfg = load_config(PRESET, ["--train.batch_size", "16", "--warmup.targets", "expected", *extra])
    _, tok = build_policy(cfg)
    return cfg, tok, build_data(cfg, tok)


def test_expected_targets_carry_the_random_players_move_distribution():
    cfg, tok, data_fn = _expected_data()
    batch = data_fn(0, jax.random.PRNGKey(5))
    env = data_fn.text.env
    digits = [tok.convert_tokens_to_ids(str(c)) for c in range(1, 10)]  # one char, one token
    for row in range(16):
        tokens, mask = batch["tokens"][row], batch["loss_mask"][row]
        pos = int(batch["target_pos"][row])
        assert mask[pos] == 1 and mask[pos - 1] == 1  # inside the answer, after "ACTION="
        assert tok.decode(tokens[pos - 7: pos].tolist()) == "ACTION="
        np.testing.assert_array_equal(batch["target_ids"][row], digits)
        legal = re.search(r"Legal: ([0-9 ]+)\n", tok.decode(tokens[:pos].tolist())).group(1).split()
        want = np.array([str(c) in legal for c in range(1, 10)], np.float32) / len(legal)
        np.testing.assert_allclose(batch["target_probs"][row], want, rtol=1e-6)
        assert str(digits.index(int(tokens[pos])) + 1) in legal  # the drawn move is one of them
    assert env.num_actions == 9


def test_expected_loss_scores_the_move_token_by_the_players_distribution():
    """Reference in float64 numpy from the model's logits: every answer token's
    -log p, except the move token's, which is -sum_a p(a) log q(id_a)."""
    from jaxrl_lm.train.sft import forward, sft_loss

    cfg, tok, data_fn = _expected_data()
    model, _ = build_policy(cfg)
    batch = {k: v[:6] for k, v in data_fn(1, jax.random.PRNGKey(7)).items()}
    (got, count), _ = sft_loss(model, batch)
    z = np.asarray(forward(model, batch["tokens"][:, :-1]), np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = 0.0
    for row in range(6):
        pos, probs = int(batch["target_pos"][row]), batch["target_probs"][row].astype(np.float64)
        for t in np.flatnonzero(batch["loss_mask"][row][1:]) + 1:
            if t == pos:
                ref -= (probs * logp[row, t - 1, batch["target_ids"][row]]).sum()
            else:
                ref -= logp[row, t - 1, batch["tokens"][row, t]]
    assert float(count) == batch["loss_mask"][:, 1:].sum()
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    # and it differs from the plain loss of the drawn moves
    (hard, _), _ = sft_loss(model, {"tokens": batch["tokens"], "loss_mask": batch["loss_mask"]})
    assert abs(float(hard) - ref) > 1e-3


def test_expected_targets_errors_name_the_field():
    import pytest

    from jaxrl_lm.config import ConfigError
    from jaxrl_lm.train import env_data

    with pytest.raises(ConfigError, match="warmup.player='greedy_frequency' plays "
                                          "env.name='bandit' only"):
        load_config(PRESET, ["--warmup.player", "greedy_frequency", "--warmup.steps", "5"])
    # arithmetic answers are several digits: the moves differ in more than one token
    cfg = load_config(PRESET, ["--warmup.targets", "expected", "--env.name", "arithmetic",
                               "--env.options", "{}", "--env.max_prompt_len", "64"])
    _, tok = build_policy(cfg)
    with pytest.raises(ConfigError, match="differ in more than their last token"):
        env_data.check_expected_targets(cfg, tok)
