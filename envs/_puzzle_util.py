"""Small helpers shared by the puzzle envs (minesweeper, twenty_questions,
cellular_automata, arithmetic). Leading underscore: not auto-imported as an env.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lm.envs.core import Env


def reward_range(env: Env, lo: float, hi: float) -> tuple[float, float]:
    """Bounds of every reward `env.step` can emit, the illegal-action penalty included.

    `lo`, `hi` bound the env's own rewards. Under illegal="end" the penalty replaces
    the reward; under illegal="random" it is added to the reward of the random move.
    """
    p = float(env.illegal_penalty)
    if env.illegal == "random":
        return (min(lo, lo + p), max(hi, hi + p))
    return (min(lo, p), max(hi, p))


def random_legal(key: jax.Array, mask: jax.Array) -> jax.Array:
    """A uniformly random index among the True entries of `mask` (bool[A]) -> i32[]."""
    logits = jnp.where(mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def below(bits: jax.Array, n: int) -> jax.Array:
    """u32: floor(bits * n / 2**32), uniform over [0, n) for uniform uint32
    `bits` up to a bias <= n / 2**32 (Lemire's multiply-shift, in 16-bit
    halves so it stays in uint32). Needs n < 2**16."""
    if not 1 <= n < 2**16:
        raise ValueError(f"below: n={n} must lie in [1, 65535]")
    bits = bits.astype(jnp.uint32)
    hi = (bits >> 16) * jnp.uint32(n)
    lo = (bits & jnp.uint32(0xFFFF)) * jnp.uint32(n)
    return (hi + (lo >> 16)) >> 16


def argmax_random_tie(key: jax.Array, score: jax.Array) -> jax.Array:
    """argmax of f32[A] with ties broken uniformly at random -> i32[].

    Entries at -inf are never picked unless all are.
    """
    noise = jax.random.uniform(key, score.shape, minval=0.0, maxval=0.5)
    best = score == jnp.max(score)
    return jnp.argmax(jnp.where(best, noise, -1.0)).astype(jnp.int32)


def piece_ids(pieces: tuple[str, ...]) -> dict[str, int]:
    """Index of each piece string; pieces must be distinct."""
    ids = {p: i for i, p in enumerate(pieces)}
    if len(ids) != len(pieces):
        raise ValueError("text_pieces must be distinct strings")
    return ids


def digit_slots(value: jax.Array, width: int, digit0: int) -> jax.Array:
    """Decimal digits of a non-negative i32[] as piece ids i32[width], no leading zeros.

    `digit0` is the piece id of "0" (pieces "0".."9" consecutive); unused leading
    slots are -1. Zero renders as a single "0".
    """
    powers = 10 ** jnp.arange(width - 1, -1, -1, dtype=jnp.int32)
    digits = (value // powers) % 10
    used = (value >= powers) | (powers == 1)
    return jnp.where(used, digit0 + digits, -1).astype(jnp.int32)


def play(env: Env, policy, key: jax.Array, batch: int):
    """Play `batch` episodes of `env.max_steps` steps with `policy(env, state, key)`.

    Returns (initial states [B], states after each step [B, T], actions
    i32[B, T]); steps after the end are absorbing no-ops. Jitted and vmapped, for
    tests and scripted-data generation.
    """

    def one(k):
        k0, k1 = jax.random.split(k)
        s0 = env.init(k0)

        def body(s, kk):
            ka, ks = jax.random.split(kk)
            a = policy(env, s, ka)
            s2 = env.step(s, a, ks)
            return s2, (s2, a)

        _, (traj, acts) = jax.lax.scan(body, s0, jax.random.split(k1, env.max_steps))
        return s0, traj, acts

    return jax.jit(jax.vmap(one))(jax.random.split(key, batch))
