"""Scripted players for the supervised warm-up: jittable `(state, key) ->
action` functions, and for the ones whose move distribution is known, `state
-> probs` (what `warmup.targets: expected` imitates).

    random               a uniformly random legal move (any env): knows the
                         format, plays badly
    greedy_frequency     bandits: the failure modes RLFT found in LLMs
                         (tries few arms, sticks with the most pulled)
    explore_then_greedy  bandits: every arm once, then the best mean
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# (state, key) -> action i32[]; jittable.
Player = Callable[[Any, jax.Array], jax.Array]


def random_legal_player(state: Any, key: jax.Array) -> jax.Array:
    logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


GREEDY_EXPLORE, GREEDY_REPEAT = 0.05, 0.5  # greedy_frequency's defaults


def greedy_frequency_player(state: Any, key: jax.Array, *, explore: float = GREEDY_EXPLORE,
                            repeat: float = GREEDY_REPEAT) -> jax.Array:
    """A bandit player with the failure modes RLFT found in LLMs (needs a state
    with `counts` and `sums`, as envs.bandit has): its first pull is a random
    arm; then, with probability `explore`, a random arm; else with probability
    `repeat` the arm it pulled most (frequency bias), otherwise the tried arm
    with the best mean so far (greedy). Ties go to the lowest index. So it
    tries few arms and sticks with them.
    """
    k_explore, k_kind, k_arm = jax.random.split(key, 3)
    counts = state.counts
    k = counts.shape[-1]
    tried = counts > 0
    means = jnp.where(tried, state.sums / jnp.maximum(counts, 1), -jnp.inf)
    pick = jnp.where(jax.random.uniform(k_kind) < repeat, jnp.argmax(counts), jnp.argmax(means))
    arm = jax.random.randint(k_arm, (), 0, k)
    go_random = ~tried.any() | (jax.random.uniform(k_explore) < explore)
    return jnp.where(go_random, arm, pick).astype(jnp.int32)


def random_legal_probs(state: Any) -> jax.Array:
    """f32[A]: the random legal player's move distribution."""
    legal = state.legal_action_mask.astype(jnp.float32)
    return legal / jnp.maximum(legal.sum(), 1.0)


def greedy_frequency_probs(state: Any, *, explore: float = GREEDY_EXPLORE,
                           repeat: float = GREEDY_REPEAT) -> jax.Array:
    """f32[k]: greedy_frequency_player's move distribution: uniform before any
    pull, else explore / k on every arm plus (1 - explore) split as repeat on
    the most-pulled arm and 1 - repeat on the best tried mean (the same arm may
    get both); ties to the lowest index, as the player breaks them."""
    counts = state.counts
    k = counts.shape[-1]
    tried = counts > 0
    means = jnp.where(tried, state.sums / jnp.maximum(counts, 1), -jnp.inf)
    most = jax.nn.one_hot(jnp.argmax(counts), k)
    best = jax.nn.one_hot(jnp.argmax(means), k)
    p = explore / k + (1.0 - explore) * (repeat * most + (1.0 - repeat) * best)
    return jnp.where(tried.any(), p, 1.0 / k).astype(jnp.float32)


def explore_then_greedy_probs(state: Any) -> jax.Array:
    """f32[k] one-hot: the lowest-index untried arm while any is untried, then
    the tried arm with the best mean so far (ties to the lowest index). Not a
    failure mode: the explore-first, then greedy strategy an RL-tuned bandit
    agent should approach (coverage 1 and frequency bias 0 by construction),
    for checking what the model can learn to read from the prompt."""
    counts = state.counts
    k = counts.shape[-1]
    untried = counts == 0
    means = jnp.where(untried, -jnp.inf, state.sums / jnp.maximum(counts, 1))
    arm = jnp.where(untried.any(), jnp.argmax(untried), jnp.argmax(means))
    return jax.nn.one_hot(arm, k, dtype=jnp.float32)


def explore_then_greedy_player(state: Any, key: jax.Array) -> jax.Array:
    """explore_then_greedy_probs's arm (deterministic; `key` unused)."""
    del key
    return jnp.argmax(explore_then_greedy_probs(state)).astype(jnp.int32)


# players whose move distribution is known (warmup.targets="expected")
PLAYER_PROBS: dict[str, Callable[[Any], jax.Array]] = {
    "random": random_legal_probs, "greedy_frequency": greedy_frequency_probs,
    "explore_then_greedy": explore_then_greedy_probs}


# config `warmup.player` -> Player
PLAYERS: dict[str, Player] = {"random": random_legal_player,
                              "greedy_frequency": greedy_frequency_player,
                              "explore_then_greedy": explore_then_greedy_player}


# warmup.targets: imitate one move drawn from the player per board ("sampled"),
# or the cross-entropy against its whole move distribution (PLAYER_PROBS)
WARMUP_TARGETS = ("sampled", "expected")


def get_player(name: str) -> Player:
    if name not in PLAYERS:
        raise ValueError(f"warmup.player={name!r}: unknown player; choose one of "
                         f"{', '.join(PLAYERS)}")
    return PLAYERS[name]
