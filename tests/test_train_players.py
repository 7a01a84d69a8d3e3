"""The scripted warm-up players (jaxrl_lm/train/players.py): the greedy
frequency-biased and explore-then-greedy bandit players against hand-worked
numbers and float64 numpy, and the player registry."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.config import WarmupSection
from jaxrl_lm.train.players import (PLAYER_PROBS, PLAYERS, get_player, greedy_frequency_player,
                                    greedy_frequency_probs)


def _state(counts, sums):
    return SimpleNamespace(counts=jnp.asarray(counts, jnp.int32),
                           sums=jnp.asarray(sums, jnp.float32))


def _picks(state, n=4000, **kw):
    keys = jax.random.split(jax.random.key(0), n)
    f = jax.jit(jax.vmap(lambda k: greedy_frequency_player(state, k, **kw)))
    return np.asarray(f(keys))


def test_player_repeats_most_pulled_or_best_tried_arm():
    # arm 1 pulled most (mean 0.2), arm 2 best mean (0.9), arm 0 untried, arm 3 mean -1
    s = _state([0, 5, 1, 2, 0], [0.0, 1.0, 0.9, -2.0, 0.0])
    assert set(_picks(s, 64, explore=0.0, repeat=1.0)) == {1}
    assert set(_picks(s, 64, explore=0.0, repeat=0.0)) == {2}  # untried arm 0 (sum 0) not best
    a = _picks(s, explore=0.05, repeat=0.5)
    freq = np.bincount(a, minlength=5) / a.size
    # 0.95 * 0.5 + 0.05 / 5 = 0.485 for arms 1 and 2, 0.01 for each other arm
    np.testing.assert_allclose(freq, [0.01, 0.485, 0.485, 0.01, 0.01], atol=0.03)


def test_player_first_pull_is_uniform():
    a = _picks(_state([0] * 4, [0.0] * 4), explore=0.0, repeat=1.0)
    np.testing.assert_allclose(np.bincount(a, minlength=4) / a.size, 0.25, atol=0.03)


def _probs_f64(counts, sums, explore, repeat):
    """greedy_frequency's move distribution in float64 numpy, from its definition."""
    counts, sums = np.asarray(counts), np.asarray(sums, np.float64)
    k = counts.size
    if not (counts > 0).any():
        return np.full(k, 1.0 / k)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
    p = np.full(k, explore / k)
    p[int(np.argmax(counts))] += (1 - explore) * repeat
    p[int(np.argmax(means))] += (1 - explore) * (1 - repeat)
    return p


@pytest.mark.parametrize("counts,sums,explore,repeat", [
    ([0, 5, 1, 2, 0], [0.0, 1.0, 0.9, -2.0, 0.0], 0.05, 0.5),  # most-pulled != best
    ([0, 5, 1, 2, 0], [0.0, 4.0, 0.3, -2.0, 0.0], 0.05, 0.5),  # the same arm is both
    ([2, 2, 0, 1], [-1.0, -3.0, 0.0, -0.5], 0.2, 0.7),  # tied counts; best mean is arm 3
    ([0, 0, 0], [0.0, 0.0, 0.0], 0.05, 0.5),  # nothing pulled yet: uniform
])
def test_probs_match_numpy_and_the_players_frequencies(counts, sums, explore, repeat):
    state = _state(counts, sums)
    want = _probs_f64(counts, sums, explore, repeat)
    got = np.asarray(greedy_frequency_probs(state, explore=explore, repeat=repeat), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.sum() == pytest.approx(1.0, abs=1e-6)
    # the sampled player draws from exactly this distribution: chi-square over 20000 draws
    n = 20000
    freq = np.bincount(_picks(state, n, explore=explore, repeat=repeat), minlength=want.size)
    stat = ((freq - n * want) ** 2 / (n * want)).sum()
    assert stat < 20.5, (freq, n * want)  # chi-square, <= 4 dof, p < 0.0004


def test_player_registry():
    assert set(PLAYERS) == {"random", "greedy_frequency", "explore_then_greedy"} \
        == set(PLAYER_PROBS)
    assert get_player("greedy_frequency") is greedy_frequency_player
    assert WarmupSection(player="greedy_frequency").player == "greedy_frequency"
    with pytest.raises(ValueError, match="warmup.player"):
        get_player("ucb")
    with pytest.raises(ValueError, match="player"):
        WarmupSection(player="nope")


def test_explore_then_greedy_hand_worked():
    player = get_player("explore_then_greedy")
    key = jax.random.key(0)
    # arms 0 and 2 tried: the lowest untried arm, 1
    state = _state([1, 0, 3, 0], [0.5, 0.0, 3.0, 0.0])
    assert int(player(state, key)) == 1
    np.testing.assert_array_equal(np.asarray(PLAYER_PROBS["explore_then_greedy"](state)),
                                  [0, 1, 0, 0])
    # all tried: means 0.5, -1, 0.5, 1.0 -> the best mean (3), not the most pulled (2)
    assert int(player(_state([2, 1, 3, 1], [1.0, -1.0, 1.5, 1.0]), key)) == 3
    # means 0.5, -1, 1.0, 1.0: ties go to the lowest index (2)
    assert int(player(_state([2, 1, 3, 1], [1.0, -1.0, 3.0, 1.0]), key)) == 2
    # nothing pulled yet: arm 0
    assert int(player(_state([0, 0, 0], [0.0, 0.0, 0.0]), key)) == 0
