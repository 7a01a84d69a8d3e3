"""Helpers shared by the guessing games (mastermind, wordle, battleship).
Leading underscore: not auto-imported as an env.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrl_lm.envs.core import Env


def reward_range(env: Env, lo: float, hi: float) -> tuple[float, float]:
    """Bounds of every reward `env.step` emits given the env's own [lo, hi].

    Under illegal="end" the penalty replaces the reward; under "random" it is
    added to the reward of the random legal move played instead.
    """
    p = float(env.illegal_penalty)
    if env.illegal == "random":
        return min(lo, lo + p), max(hi, hi + p)
    return min(lo, p), max(hi, p)


def choose(mask: jax.Array, key: jax.Array) -> jax.Array:
    """Uniform index among the True entries of bool[A] -> i32[] (0 if none)."""
    return choose_u(mask, jax.random.uniform(key))


def choose_u(mask: jax.Array, u: jax.Array) -> jax.Array:
    """`choose` given its uniform draw u in [0, 1) (f32[]).

    k = floor(u * #True), then the index of the k-th True entry, found in two
    levels (blocks of ~sqrt(A)) because XLA's CPU cumsum is quadratic in its
    length, and A Gumbel draws would cost far more random bits.
    """
    (a,) = mask.shape
    cols = max(1, math.isqrt(a - 1) + 1)
    rows = -(-a // cols)
    mask_rc = jnp.pad(mask, (0, rows * cols - a)).reshape(rows, cols).astype(jnp.int32)
    n_r = jnp.sum(mask_rc, axis=1)
    n = jnp.sum(n_r)
    k = jnp.floor(u * n).astype(jnp.int32)
    k = jnp.minimum(k, jnp.maximum(n - 1, 0))
    cum_r = jnp.cumsum(n_r)
    r = jnp.argmax(cum_r > k)
    k_in = k - (cum_r[r] - n_r[r])
    c = jnp.argmax(jnp.cumsum(mask_rc[r]) > k_in)
    return (r * cols + c).astype(jnp.int32)


def history_slot(history: jax.Array, step: jax.Array, value: jax.Array) -> jax.Array:
    """`history` with row `step` set to `value` (rows past the end are dropped)."""
    return history.at[step].set(value, mode="drop")
