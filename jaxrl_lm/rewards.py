"""Reward shaping for LM RL: length, repetition, invalid actions, exploration.

Sequence-level functions take `[B]` arrays (correctness flags, response
lengths in tokens); dense ones return per-token or per-step `[B, T]` rewards
to add to the environment's. `shape_rewards` applies the run's `shaping`
section to a rollout's per-turn rewards before any advantage is computed.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import chex
import jax
import jax.numpy as jnp

from jaxrl_lm.metrics.text import repeated_ngram_starts

if TYPE_CHECKING:
    from jaxrl_lm.config_sections import ShapingSection
    from jaxrl_lm.rollout import Trajectory


def cosine_length_reward(
    correct: jax.Array,
    length: jax.Array,
    *,
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
) -> jax.Array:
    """Cosine length-scaled reward (Yeo et al. 2025, "Demystifying Long
    Chain-of-Thought Reasoning in LLMs"):

        CosFn(t, T, lo, hi) = lo + (hi - lo) (1 + cos(pi t / T)) / 2

    goes from hi at t = 0 to lo at t = T. A correct answer gets
    CosFn(len, max_len, rL_correct, r0_correct) (short correct answers earn
    most), a wrong one CosFn(len, max_len, rL_wrong, r0_wrong) (short wrong
    answers are punished most, so a wrong model is pushed to think longer),
    and any length >= max_len gets r_exceed. [B] -> [B] float32.
    """
    if int(max_len) != max_len or max_len <= 0:
        raise ValueError(f"max_len={max_len!r}: must be a positive integer")
    chex.assert_equal_shape([correct, length])
    correct = correct.astype(bool)
    t = length.astype(jnp.float32)
    hi = jnp.where(correct, r0_correct, r0_wrong)
    lo = jnp.where(correct, rL_correct, rL_wrong)
    reward = lo + (hi - lo) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / max_len))
    return jnp.where(length >= max_len, r_exceed, reward).astype(jnp.float32)


def repetition_penalty(tokens: jax.Array, mask: jax.Array, *, ngram: int = 40,
                       penalty: float = -0.05) -> jax.Array:
    """Dense repetition penalty (Yeo et al. 2025): every token that lies inside an
    n-gram already seen earlier in the same response gets `penalty` (once,
    however many repeats cover it). tokens, mask: [B, T] -> [B, T] float32.

    Exact n-gram comparison (no hashing), O(ngram * T^2) elementwise per response.
    """
    if int(ngram) != ngram or ngram < 1:
        raise ValueError(f"ngram={ngram!r}: must be a positive integer")
    chex.assert_rank([tokens, mask], 2)
    chex.assert_equal_shape([tokens, mask])
    return _repetition_penalty(tokens, mask, int(ngram), float(penalty))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _repetition_penalty(tokens, mask, ngram, penalty):
    def one(tok_t, m_t):
        repeated, _ = repeated_ngram_starts(tok_t, m_t, ngram)
        # Token t is covered if a repeated n-gram starts in [t - ngram + 1, t].
        starts = jnp.cumsum(repeated.astype(jnp.int32))
        before = jnp.concatenate([jnp.zeros(ngram, jnp.int32), starts])[: starts.shape[0]]
        covered = (starts - before) > 0
        return jnp.where(covered & m_t.astype(bool), penalty, 0.0).astype(jnp.float32)

    return jax.vmap(one)(tokens, mask)


def kimi_length_reward(correct: jax.Array, lengths: jax.Array, group_size: int) -> jax.Array:
    """Kimi k1.5 length reward (Kimi Team 2025), per group of `group_size`:

        lam = 0.5 - (len - min_len) / (max_len - min_len)
        correct -> lam,  wrong -> min(0, lam)

    The shortest response gets 0.5, the longest -0.5; a group whose lengths
    are all equal gets 0. [B] -> [B] float32.
    """
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: must be a positive integer")
    chex.assert_rank([correct, lengths], 1)
    chex.assert_equal_shape([correct, lengths])
    if lengths.shape[0] % group_size:
        raise ValueError(f"group_size={group_size} must divide the batch size {lengths.shape[0]}")
    l_gk = lengths.astype(jnp.float32).reshape(-1, group_size)
    lo, hi = l_gk.min(-1, keepdims=True), l_gk.max(-1, keepdims=True)
    lam = jnp.where(hi > lo, 0.5 - (l_gk - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.0).reshape(-1)
    return jnp.where(correct.astype(bool), lam, jnp.minimum(0.0, lam))


def overlong_penalty(lengths: jax.Array, *, max_len: int, cache_len: int) -> jax.Array:
    """DAPO's soft overlong punishment (Yu et al. 2025), with L = max_len, C = cache_len:

        0                        len <= L - C
        (L - C - len) / C        L - C < len <= L     (linear from 0 to -1)
        -1                       len > L

    [B] -> [B] float32.
    """
    if int(max_len) != max_len or max_len <= 0:
        raise ValueError(f"max_len={max_len!r}: must be a positive integer")
    if int(cache_len) != cache_len or not 0 < cache_len <= max_len:
        raise ValueError(f"cache_len={cache_len!r}: must be an integer in (0, max_len={max_len}]")
    n = lengths.astype(jnp.float32)
    soft = (max_len - cache_len - n) / cache_len
    return jnp.where(n <= max_len - cache_len, 0.0, jnp.where(n <= max_len, soft, -1.0))


def invalid_action_penalty(valid: jax.Array, *, penalty: float = -5.0) -> jax.Array:
    """RLFT's format penalty (Schmied et al. 2025): `penalty` where no action
    parsed (valid False), else 0. Any shape -> float32 of the same shape."""
    return jnp.where(valid.astype(bool), 0.0, penalty).astype(jnp.float32)


def exploration_bonus(actions: jax.Array, num_actions: int, *, bonus: float = 1.0,
                      mask: jax.Array | None = None) -> jax.Array:
    """+`bonus` at each step whose arm was not tried at an earlier valid step of
    the episode (RLFT's exploration bonus). actions [..., T] -> [..., T] float32;
    actions outside [0, num_actions) and masked steps get 0.
    """
    if int(num_actions) != num_actions or num_actions < 1:
        raise ValueError(f"num_actions={num_actions!r}: must be a positive integer")
    m = jnp.ones(actions.shape, bool) if mask is None else mask.astype(bool)
    chex.assert_equal_shape([actions, m])
    onehot_tk = jax.nn.one_hot(actions, num_actions, dtype=jnp.int32) * m[..., None]
    before_tk = jnp.cumsum(onehot_tk, axis=-2) - onehot_tk
    first = ((onehot_tk > 0) & (before_tk == 0)).any(-1)
    return jnp.where(first, bonus, 0.0).astype(jnp.float32)


def shape_rewards(shaping: ShapingSection, traj: Trajectory, *, max_new_tokens: int,
                  env: Any = None) -> Trajectory:
    """`traj` with the shaping of `shaping` added to its per-turn rewards
    (the invalid-answer penalty is already in them, from the rollout).

    expected_reward: each active turn's sampled env reward is swapped for the
      env's expected reward of the action played (`env.expected_reward`; the
      env is needed for it);
    exploration_bonus: RLFT's bonus on a turn whose parsed action is new in
      its episode (`exploration_bonus`);
    overlong_cache: DAPO's soft overlong penalty on the turn's completion
      length against `max_new_tokens` (`overlong_penalty`);
    cosine_length: the turn's env reward replaced by `cosine_length_reward`
      (correct = env reward > 0; a completion that used the whole budget gets
      r_exceed, as one that never stopped);
    repetition_ngram: `repetition_penalty` summed over the completion's tokens;
    turn_penalty: added to every active turn (a cost per move).
    """
    r = traj.reward
    if shaping.cosine_length:
        n = traj.completion_len.reshape(-1)
        cos = cosine_length_reward(traj.env_reward.reshape(-1) > 0, n,
                                   max_len=max_new_tokens).reshape(r.shape)
        r = r + jnp.where(traj.active, cos - traj.env_reward, 0.0)
    if shaping.repetition_ngram:
        t, b, m = traj.completion.shape
        mask = jnp.arange(m)[None, :] < traj.completion_len.reshape(-1, 1)
        rep = repetition_penalty(traj.completion.reshape(t * b, m), mask,
                                 ngram=shaping.repetition_ngram,
                                 penalty=shaping.repetition_penalty).sum(-1).reshape(r.shape)
        r = r + jnp.where(traj.active, rep, 0.0)
    if shaping.expected_reward:
        if env is None:
            raise ValueError("shaping.expected_reward: shape_rewards needs the env")
        mean = jax.vmap(jax.vmap(env.expected_reward))(traj.states, traj.action)
        r = r + jnp.where(traj.active, mean - traj.env_reward, 0.0)
    if shaping.exploration_bonus:
        # Arms count as tried once played, but only the model's own choices
        # earn the bonus: an unparsable answer's random stand-in does not.
        num_actions = traj.states.legal_action_mask.shape[-1]
        bonus = exploration_bonus(traj.action.T, num_actions, bonus=shaping.exploration_bonus,
                                  mask=traj.active.T)
        r = r + jnp.where(traj.valid, bonus.T, 0.0)
    if shaping.overlong_cache:
        pen = overlong_penalty(traj.completion_len.reshape(-1), max_len=max_new_tokens,
                               cache_len=shaping.overlong_cache).reshape(r.shape)
        r = r + jnp.where(traj.active, pen, 0.0)
    if shaping.turn_penalty:
        r = r + jnp.where(traj.active, shaping.turn_penalty, 0.0)
    return traj._replace(reward=r)
