"""Decision-making metrics for bandit-like episodes (Schmied et al. 2025, "LLMs
are Greedy Agents: Effects of RL Fine-tuning on Decision-Making Abilities").

All take `actions` [..., T] of integer arm indices (anything outside
[0, num_actions), e.g. -1 for an unparsable answer, is a step that picks no
arm) and an optional `mask` [..., T] of valid steps; leading dims are batch.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _prep(actions, num_actions, mask, *others):
    if int(num_actions) != num_actions or num_actions < 1:
        raise ValueError(f"num_actions={num_actions!r}: must be a positive integer")
    if actions.ndim < 1:
        raise ValueError(f"actions: need rank >= 1 ([..., T]), got shape {actions.shape}")
    m = jnp.ones(actions.shape, bool) if mask is None else mask.astype(bool)
    chex.assert_equal_shape([actions, m, *others])
    onehot_tk = jax.nn.one_hot(actions, num_actions, dtype=jnp.float32) * m[..., None]
    return m, onehot_tk


def action_coverage(actions: jax.Array, num_actions: int, *, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of the arms tried at steps <= t, [..., T] (non-decreasing in t)."""
    _, onehot = _prep(actions, num_actions, mask)
    tried = jnp.cumsum(onehot, axis=-2) > 0
    return tried.mean(-1)


def cumulative_regret(actions: jax.Array, arm_means: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """sum_{s <= t} (max_k mu_k - mu_{a_s}) over valid steps, [..., T].

    `arm_means` [..., K] broadcasts against the batch dims of `actions`. A
    step that picks no arm earns an expected 0, so it costs max_k mu_k.
    """
    K = arm_means.shape[-1]
    m, onehot = _prep(actions, K, mask)
    mu = arm_means.astype(jnp.float32)[..., None, :]
    gap = mu.max(-1) - (onehot * mu).sum(-1)
    return jnp.cumsum(jnp.where(m, gap, 0.0), axis=-1)


def _step_stats(actions, rewards, num_actions, mask):
    """Per step t, from the valid steps before t: greedy-arm set, most-frequent set, any-tried."""
    m, onehot = _prep(actions, num_actions, mask, rewards)
    count = jnp.cumsum(onehot, axis=-2) - onehot
    r_tk = onehot * rewards.astype(jnp.float32)[..., None]
    total = jnp.cumsum(r_tk, axis=-2) - r_tk
    tried = count > 0
    emp_mean = jnp.where(tried, total / jnp.maximum(count, 1), -jnp.inf)
    greedy_set = tried & (emp_mean == emp_mean.max(-1, keepdims=True))
    freq_set = tried & (count == count.max(-1, keepdims=True))
    picks = lambda s: (onehot * s).sum(-1) > 0  # noqa: E731
    return m & tried.any(-1), picks(greedy_set), picks(freq_set)


def greediness(actions: jax.Array, rewards: jax.Array, num_actions: int, *,
               mask: jax.Array | None = None) -> jax.Array:
    """Fraction of steps that pick an arm with the best empirical mean reward
    among the arms tried so far (ties: any best arm counts). [..., T] -> [...].

    Steps before any arm has been tried are not counted; 0 if none remain.
    """
    counted, greedy, _ = _step_stats(actions, rewards, num_actions, mask)
    n = counted.sum(-1)
    return jnp.where(n > 0, (counted & greedy).sum(-1) / jnp.maximum(n, 1), 0.0)


def frequency_bias(actions: jax.Array, rewards: jax.Array, num_actions: int, *,
                   mask: jax.Array | None = None) -> jax.Array:
    """Fraction of steps that pick the most frequent action of the context (the
    earlier steps) without it being greedy: an action that is both counts as
    greedy, as in RLFT. Counted steps as in `greediness`. [..., T] -> [...].
    """
    counted, greedy, frequent = _step_stats(actions, rewards, num_actions, mask)
    n = counted.sum(-1)
    return jnp.where(n > 0, (counted & frequent & ~greedy).sum(-1) / jnp.maximum(n, 1), 0.0)
