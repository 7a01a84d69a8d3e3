"""The greedy frequency-biased warm-up player and the bandit evaluation metrics
(jaxrl_lm/train/bandit_eval.py) against hand-worked numbers and float64 numpy."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.config import WarmupSection
from jaxrl_lm.evaluation import bandit as bandit_eval
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


def test_decision_metrics_hand_worked():
    # K=3, mu=(0.1, 0.5, 0.9). Episode 0: arms 0,0,1,0 with rewards 1,0,2,0.
    #  coverage 2/3; regret 0.8+0.8+0.4+0.8 = 2.8;
    #  step 0 not counted; step 1 arm 0 is best (and most frequent) -> greedy;
    #  step 2 arm 1 untried -> neither; step 3 arm 0: best is arm 1 (mean 2), arm 0 most
    #  pulled -> frequency bias. greediness 1/3, frequency bias 1/3.
    # Episode 1: arms 2,1,2 then a masked step; rewards 0.5,0.7,0.1.
    #  coverage 2/3; regret 0+0.4+0 = 0.4; step 1 arm 1 untried; step 2 arm 2: means
    #  (2: 0.5, 1: 0.7) -> not greedy, counts tie at 1 -> most frequent -> bias.
    #  greediness 0/2, frequency bias 1/2.
    actions = jnp.asarray([[0, 0, 1, 0], [2, 1, 2, 0]])
    rewards = jnp.asarray([[1.0, 0.0, 2.0, 0.0], [0.5, 0.7, 0.1, 9.0]])
    mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    mu = jnp.asarray([[0.1, 0.5, 0.9]] * 2)
    got = bandit_eval.decision_metrics(actions, rewards, mu, mask)
    want = {"coverage": 2 / 3, "regret": (2.8 + 0.4) / 2, "greediness": (1 / 3 + 0) / 2,
            "frequency_bias": (1 / 3 + 1 / 2) / 2}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    # the Trajectory view: [T, B] fields, arm means from the first turn's state
    traj = SimpleNamespace(action=actions.T, env_reward=rewards.T, active=mask.T,
                           states=SimpleNamespace(mu=jnp.broadcast_to(mu, (4, 2, 3))))
    assert bandit_eval.trajectory_metrics(traj) == pytest.approx(got)


def test_baselines_against_numpy():
    env = envs.make("bandit", k=4, horizon=12, context=2)
    actions, rewards, mu = map(np.asarray, bandit_eval.baseline_play(env, "ucb", 8, seed=3))
    assert actions.shape == rewards.shape == (8, 12) and mu.shape == (8, 4)
    # UCB pulls every untried arm first: full coverage after k pulls
    assert all(sorted(row[:4]) == [0, 1, 2, 3] for row in actions)
    m = bandit_eval.decision_metrics(jnp.asarray(actions), jnp.asarray(rewards), jnp.asarray(mu))
    assert m["coverage"] == 1.0
    mu64 = mu.astype(np.float64)
    regret = (mu64.max(1)[:, None] - np.take_along_axis(mu64, actions, 1)).sum(1).mean()
    assert m["regret"] == pytest.approx(regret, rel=1e-5)


def test_bandit_table_lists_policy_and_baselines():
    res = {m: 0.5 for m in bandit_eval.METRICS}
    res.update({f"{b}_{m}": 0.25 for b in bandit_eval.BASELINES for m in bandit_eval.METRICS})
    table = bandit_eval.bandit_table({"train env": res}, {"train env": res})
    assert [line.split()[2] for line in table.splitlines()[1:]] == ["before", "after", "ucb",
                                                                      "random"]
    assert bandit_eval.bandit_table({}, {"x": {"return": 1.0}}) == ""


def test_exploration_bonus_shaping_hand_worked():
    """shaping.exploration_bonus adds the bonus on a turn whose arm is new to the
    episode; an unparsable answer's random stand-in counts as tried but earns
    nothing, and inactive turns earn nothing."""
    from jaxrl_lm.config import ShapingSection
    from jaxrl_lm.rewards import shape_rewards
    from jaxrl_lm.rollout import Trajectory

    # [T=5, B=2]; episode 0: arms 1, 1, 0 (invalid), 0, 2; episode 1: arms 3, 0, then over.
    action = jnp.asarray([[1, 3], [1, 0], [0, 2], [0, 2], [2, 2]])
    valid = jnp.asarray([[1, 1], [1, 1], [0, 1], [1, 1], [1, 1]], bool)
    active = jnp.asarray([[1, 1], [1, 1], [1, 0], [1, 0], [1, 0]], bool)
    reward = jnp.where(active, 0.5, 0.0)
    zeros = jnp.zeros((5, 2), jnp.int32)
    traj = Trajectory(prompt=zeros[..., None], prompt_len=zeros, completion=zeros[..., None],
                      completion_len=zeros + 2, logp=jnp.zeros((5, 2, 1)), active=active,
                      action=action, valid=valid, env_reward=reward, reward=reward,
                      done=zeros.astype(bool), states=SimpleNamespace(
                          legal_action_mask=jnp.ones((5, 2, 4), bool)))
    got = np.asarray(shape_rewards(ShapingSection(exploration_bonus=2.0), traj,
                                   max_new_tokens=8).reward)
    want = np.asarray([[2.5, 2.5], [0.5, 2.5], [0.5, 0.0], [0.5, 0.0], [2.5, 0.0]])
    np.testing.assert_allclose(got, want)
    off = shape_rewards(ShapingSection(), traj, max_new_tokens=8).reward
    np.testing.assert_allclose(np.asarray(off), np.asarray(reward))
    with pytest.raises(ValueError, match="shaping.exploration_bonus"):
        ShapingSection(exploration_bonus=-1.0)


def test_expected_reward_shaping_hand_worked():
    """shaping.expected_reward swaps each active turn's sampled env reward for the
    played arm's mean, keeps the invalid penalty and adds the bonus after."""
    from typing import NamedTuple

    from jaxrl_lm.config import ShapingSection
    from jaxrl_lm.rewards import shape_rewards
    from jaxrl_lm.rollout import Trajectory

    class States(NamedTuple):  # the fields shape_rewards and Bandit.expected_reward read
        legal_action_mask: jax.Array
        mu: jax.Array

    mu = jnp.asarray([0.1, 0.4, 0.7, 0.9])
    # [T=3, B=2]; episode 0: arms 2, 2, 0 (the last invalid: its random stand-in);
    # episode 1: arm 1, then over.
    action = jnp.asarray([[2, 1], [2, 3], [0, 3]])
    valid = jnp.asarray([[1, 1], [1, 1], [0, 1]], bool)
    active = jnp.asarray([[1, 1], [1, 0], [1, 0]], bool)
    env_reward = jnp.where(active, jnp.asarray([[1.5, -0.3], [0.2, 0.0], [2.0, 0.0]]), 0.0)
    reward = env_reward + jnp.where(active & ~valid, -5.0, 0.0)
    zeros = jnp.zeros((3, 2), jnp.int32)
    traj = Trajectory(prompt=zeros[..., None], prompt_len=zeros, completion=zeros[..., None],
                      completion_len=zeros + 2, logp=jnp.zeros((3, 2, 1)), active=active,
                      action=action, valid=valid, env_reward=env_reward, reward=reward,
                      done=zeros.astype(bool),
                      states=States(jnp.ones((3, 2, 4), bool), jnp.broadcast_to(mu, (3, 2, 4))))
    env = envs.make("bandit", k=4)
    cfg = ShapingSection(expected_reward=True, exploration_bonus=1.0)
    got = np.asarray(shape_rewards(cfg, traj, max_new_tokens=8, env=env).reward)
    want = np.asarray([[0.7 + 1, 0.4 + 1], [0.7, 0.0], [0.1 - 5.0, 0.0]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="shaping.expected_reward"):
        shape_rewards(cfg, traj, max_new_tokens=8)  # no env
    with pytest.raises(ValueError, match="'tictactoe' has no expected_reward"):
        shape_rewards(cfg, traj, max_new_tokens=8, env=envs.make("tictactoe"))
