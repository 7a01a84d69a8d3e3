"""The jitted multi-turn rollout: a language model plays B episodes of an env.

Each turn, for every episode at once: render the env state as a fresh prompt
(Markovian text, envs/text.py), sample a completion with the KV-cache sampler,
parse ``ACTION=<move>`` out of it, step the env. Turns are a `lax.scan`, the
batch is the sampler's batch dimension, and nothing leaves the device inside
an iteration: one XLA program per (env, tokenizer, shapes, sampling options).

    play = make_rollout(env, text, num_groups=8, group_size=4,
                        max_new_tokens=8, stop_tokens=(eos_id,))
    traj = play(graphdef, params, key)          # Trajectory, leading [T, B]

Groups: episode b belongs to group b // group_size; the episodes of one group
share the env's init key (the same task: bandit arms, secret code, board), as
GRPO/OPO need. Opponent moves and env noise still differ between episodes.

Invalid answers (no parsable action): the turn's reward gets
`invalid_penalty` (RLFT: -5) and a uniformly random legal action is played
so the episode goes on; with `standin_reward=False` the env's reward for that
stand-in is not counted (env_reward 0), for single-turn tasks where a random
answer could be right. A parsable but illegal move follows the env's own
`illegal` rule (envs/core.py).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_lm.envs.core import Env
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm import sampling


class Trajectory(NamedTuple):
    """One rollout; every field has leading dims [T turns, B episodes]."""

    prompt: jax.Array  # i32[T, B, P] rendered prompt ids, right-padded
    prompt_len: jax.Array  # i32[T, B]
    completion: jax.Array  # i32[T, B, N] sampled ids, pad after the stop token
    completion_len: jax.Array  # i32[T, B] generated tokens, stop token included
    logp: jax.Array  # f32[T, B, N] log-prob under the temperature-scaled model
    active: jax.Array  # bool[T, B] the episode was still running at this turn
    action: jax.Array  # i32[T, B] the action played (random legal one if invalid)
    valid: jax.Array  # bool[T, B] the completion parsed to an action
    env_reward: jax.Array  # f32[T, B] the env's reward for the turn
    reward: jax.Array  # f32[T, B] env reward + invalid penalty (0 when inactive)
    done: jax.Array  # bool[T, B] the episode was over after this turn
    states: Any  # env State pytree [T, B, ...]: the state each turn started from
    # i32[T, B] the rendered prompt's whole length; above P it was cut (an error
    # for the trainer and the evaluation: check_prompt_fit)
    prompt_full_len: jax.Array | None = None


def _random_legal(mask_ba: jax.Array, key: jax.Array) -> jax.Array:
    logits = jnp.where(mask_ba, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def make_rollout(env: Env, text: TextInterface, *, num_groups: int, group_size: int = 1,
                 max_turns: int | None = None, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None,
                 stop_tokens: tuple[int, ...] = (), invalid_penalty: float = -5.0,
                 standin_reward: bool = True) -> Callable[[nnx.GraphDef, nnx.State, jax.Array], Trajectory]:
    """Build the jitted rollout `play(graphdef, params, key, tasks=None) -> Trajectory`.

    max_turns defaults to env.max_steps (every episode ends by then). `tasks`
    (i32[num_groups]) picks each group's task through `env.init_task(key,
    task)` instead of `env.init(key)`: a prompt dataset's rows, in epoch
    order. A `text` with a `grade(state, ids, length) -> (action, valid)`
    method (a free-form task, jaxrl_lm.data.task) is graded by it instead of
    parsed: the state holds the reference the verifier compares against.
    """
    for name, value in (("num_groups", num_groups), ("group_size", group_size),
                        ("max_new_tokens", max_new_tokens)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an int >= 1")
    max_turns = env.max_steps if max_turns is None else max_turns
    if not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns={max_turns!r}: must be an int >= 1")
    if invalid_penalty > 0:
        raise ValueError(f"invalid_penalty={invalid_penalty}: must be <= 0")
    batch = num_groups * group_size
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, min_p=min_p, stop_tokens=tuple(stop_tokens),
                   pad_id=text.pad_id)

    def turn(graphdef, params, state, key):
        key_sample, key_random, key_step = jax.random.split(key, 3)
        prompt, prompt_len = jax.vmap(text.render)(state)
        full_len = jax.vmap(text.full_length)(state)
        out = sampling.sample((graphdef, params), prompt, prompt_len, key_sample, **options)
        # the stop token (newline or EOS) is not part of the answer
        answer_len = out.lengths - out.done.astype(jnp.int32)
        if hasattr(text, "grade"):  # a free-form task: its verifier reads the state's reference
            parsed, valid = jax.vmap(text.grade)(state, out.tokens, answer_len)
        else:
            parsed, valid = jax.vmap(text.parse)(out.tokens, answer_len)
        fallback = _random_legal(state.legal_action_mask, key_random)
        action = jnp.where(valid, parsed, fallback)
        step_keys = jax.random.split(key_step, batch)
        new = jax.vmap(env.step)(state, action, step_keys)
        active = ~state.done
        env_reward = new.reward if standin_reward else jnp.where(valid, new.reward, 0.0)
        reward = env_reward + jnp.where(valid, 0.0, invalid_penalty)
        rec = Trajectory(prompt, prompt_len, out.tokens, out.lengths, out.logp, active, action,
                         valid, env_reward, jnp.where(active, reward, 0.0), new.done, state,
                         full_len)
        return new, rec

    @jax.jit
    def play(graphdef: nnx.GraphDef, params: nnx.State, key: jax.Array,
             tasks: jax.Array | None = None) -> Trajectory:
        key_init, key_turns = jax.random.split(key)
        group_keys = jnp.repeat(jax.random.split(key_init, num_groups), group_size, axis=0)
        if tasks is None:
            state = jax.vmap(env.init)(group_keys)
        else:  # i32[num_groups]: which task each group plays (a dataset's rows)
            state = jax.vmap(env.init_task)(group_keys, jnp.repeat(tasks, group_size))

        def run(state, key):
            return turn(graphdef, params, state, key)

        out_shape = jax.eval_shape(run, state, key_turns)

        def skip(state, key):
            # every episode has ended: no sampling, an all-inactive record
            rec = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out_shape[1])
            rec = rec._replace(done=jnp.ones_like(rec.done), valid=jnp.ones_like(rec.valid),
                               completion=jnp.full_like(rec.completion, text.pad_id),
                               states=state)
            return state, rec

        def body(state, key):
            return jax.lax.cond(jnp.all(state.done), skip, run, state, key)

        _, traj = jax.lax.scan(body, state, jax.random.split(key_turns, max_turns))
        return traj

    return play


def prompt_cuts(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """(cut, longest): active turns whose prompt was longer than the P rendered
    (i32[]), and the longest whole prompt of an active turn (i32[])."""
    if traj.prompt_full_len is None:  # a trajectory built by hand
        return jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    full = jnp.where(traj.active, traj.prompt_full_len, 0)
    return (full > traj.prompt.shape[-1]).sum(dtype=jnp.int32), full.max()


def check_prompt_fit(cut: int, longest: int, max_prompt_len: int, *, where: str,
                     field: str = "env.max_prompt_len") -> None:
    """ValueError when `cut` prompts (of `where`) were longer than max_prompt_len."""
    if int(cut):
        raise ValueError(f"{field}={max_prompt_len} is too short: {int(cut)} prompt(s) "
                         f"rendered {where} were longer (up to {int(longest)} tokens) and would "
                         f"be cut; set {field} >= {int(longest)}")


def turn_faults(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """(invalid, illegal), bool[T, B] each, over active turns: the answer did not
    parse, or it parsed to an action the state did not allow (out of range or
    masked; the env's `illegal` rule then applies)."""
    legal = traj.states.legal_action_mask
    n = legal.shape[-1]
    in_range = (traj.action >= 0) & (traj.action < n)
    picked = jnp.take_along_axis(legal, jnp.clip(traj.action, 0, n - 1)[..., None], -1)[..., 0]
    invalid = traj.active & ~traj.valid
    illegal = traj.active & traj.valid & ~(in_range & picked)
    return invalid, illegal


def episode_returns(traj: Trajectory) -> jax.Array:
    """f32[B]: the sum of each episode's shaped per-turn rewards."""
    return traj.reward.sum(0)


class TurnBatch(NamedTuple):
    """A trajectory's turns flattened to training sequences, leading [M = T*B]."""

    tokens: jax.Array  # i32[M, P+N] prompt then completion, right-padded
    loss_mask: jax.Array  # f32[M, P+N] 1 on generated tokens of active turns
    old_logp: jax.Array  # f32[M, P+N] sampler log-probs aligned with tokens
    positions: jax.Array  # i32[M, P+N] 0..P+N-1


def pack_turns(traj: Trajectory, pad_id: int = 0) -> TurnBatch:
    """Concatenate each turn's prompt and completion with no padding between.

    Token j of the packed row is prompt[j] for j < plen, completion[j - plen]
    for plen <= j < plen + clen, and pad after that, so log-probs computed by
    `sampling.token_logprobs` on `tokens` line up with the sampler's `logp`.
    """
    t, b, p = traj.prompt.shape
    n = traj.completion.shape[-1]
    m = t * b
    prompt = traj.prompt.reshape(m, p)
    comp = traj.completion.reshape(m, n)
    logp = traj.logp.reshape(m, n)
    plen = traj.prompt_len.reshape(m, 1)
    clen = traj.completion_len.reshape(m, 1)
    active = traj.active.reshape(m, 1)
    j = jnp.arange(p + n)[None, :]
    k = jnp.clip(j - plen, 0, n - 1)
    in_comp = (j >= plen) & (j < plen + clen)
    from_prompt = jnp.take_along_axis(prompt, jnp.clip(j, 0, p - 1).repeat(m, 0), 1)
    tokens = jnp.where(j < plen, from_prompt, jnp.take_along_axis(comp, k, 1))
    tokens = jnp.where(j < plen + clen, tokens, pad_id)
    mask = (in_comp & active).astype(jnp.float32)
    old = jnp.where(in_comp, jnp.take_along_axis(logp, k, 1), 0.0)
    positions = jnp.broadcast_to(j, (m, p + n)).astype(jnp.int32)
    return TurnBatch(tokens.astype(jnp.int32), mask, old * mask, positions)
