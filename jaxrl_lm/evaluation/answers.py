"""How a policy answers a single-turn task: right or wrong, how long, how
repetitive, in which style. Read from the library rollout's Trajectory, so
the same numbers describe the RL batches (as `RLRunner`'s `traj_stats`, on an
env or a prompt dataset) and separate evaluations of an env
(`make_answer_eval`; a dataset's held-out rows: `evaluation.dataset`).

    correct      the task rewarded the answer (env_reward > 0: a dataset's
                 verifier said right; with shaping.standin_reward false an
                 unparsable answer earns 0)
    length       generated tokens, the stop token included
    repetition   the summed `rewards.repetition_penalty` of the completion
    direct       the completion starts with `first_token` (e.g. "#" of a
                 bare "#### 42", or "A" of "ACTION=7", against a scratchpad first)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm.models.tokenizer import pad_id, stop_tokens
from jaxrl_lm.rewards import repetition_penalty
from jaxrl_lm.rollout import Trajectory, make_rollout


def answers(traj: Trajectory, *, first_token: int | None = None, ngram: int = 4,
            penalty: float = -0.05) -> dict[str, jax.Array]:
    """Per episode [B]: correct, length, repetition and (with first_token) direct."""
    if traj.completion.shape[0] != 1:
        raise ValueError(f"answers: a single-turn trajectory is needed, got "
                         f"{traj.completion.shape[0]} turns")
    comp, length = traj.completion[0], traj.completion_len[0]
    mask = jnp.arange(comp.shape[1])[None, :] < length[:, None]
    out = {"correct": traj.env_reward[0] > 0, "length": length,
           "repetition": repetition_penalty(comp, mask, ngram=ngram, penalty=penalty).sum(-1)}
    if first_token is not None:
        out["direct"] = comp[:, 0] == first_token
    return out


def answer_stats(traj: Trajectory, *, first_token: int | None = None, ngram: int = 4,
                 penalty: float = -0.05) -> dict[str, jax.Array]:
    """Means over the episodes: accuracy, length, length_correct, length_wrong
    (0 when there are none), repetition and (with first_token) direct."""
    a = answers(traj, first_token=first_token, ngram=ngram, penalty=penalty)
    ok, n = a["correct"], a["length"].astype(jnp.float32)
    n_ok = ok.sum()
    out = {"accuracy": ok.mean(), "length": n.mean(),
           "length_correct": jnp.where(ok, n, 0.0).sum() / jnp.maximum(n_ok, 1),
           "length_wrong": jnp.where(ok, 0.0, n).sum() / jnp.maximum(ok.size - n_ok, 1),
           "repetition": a["repetition"].mean()}
    if first_token is not None:
        out["direct"] = a["direct"].mean()
    return out


def make_answer_eval(cfg: Any, tokenizer: Any, *, episodes: int, first_token: int | None = None,
                     ngram: int = 4) -> Callable[[nnx.Module, jax.Array], dict]:
    """`run(model, key) -> answers(...)` of `episodes` fresh problems of cfg.env,
    sampled as the RL rollout of `cfg` samples them (its temperature, budget, stop
    tokens, shaping.standin_reward). Compiled once; a fixed key gives the same
    problems at every call, so evaluations of successive checkpoints are paired."""
    env = envs.make(cfg.env.name, **cfg.env.options)
    text = TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len,
                         pad_id=pad_id(tokenizer))
    r = cfg.rollout
    play = make_rollout(env, text, num_groups=episodes, group_size=1, max_turns=1,
                        max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                        top_k=r.top_k, top_p=r.top_p, min_p=r.min_p,
                        stop_tokens=stop_tokens(tokenizer, newline=r.stop_at_newline),
                        invalid_penalty=cfg.shaping.invalid_penalty,
                        standin_reward=cfg.shaping.standin_reward)

    @jax.jit
    def run_split(graphdef, state, key):
        return answers(play(graphdef, state, key), first_token=first_token, ngram=ngram)

    def run(model: nnx.Module, key: jax.Array) -> dict:
        return jax.device_get(run_split(*nnx.split(model), key))

    return run
