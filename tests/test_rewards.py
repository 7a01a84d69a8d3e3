"""Reward shaping against float64 numpy / plain-Python references and hand-worked values."""

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm import rewards as R


def test_cosine_length_reward_matches_formula_and_endpoints():
    rng = np.random.default_rng(0)
    L = 100
    lens = rng.integers(0, 130, 32); corr = rng.random(32) < 0.5
    got = R.cosine_length_reward(jnp.asarray(corr), jnp.asarray(lens), max_len=L)

    def cos_fn(t, T, lo, hi):
        return lo + (hi - lo) * (1 + math.cos(math.pi * t / T)) / 2

    want = [-10.0 if n >= L else (cos_fn(n, L, 1.0, 2.0) if c else cos_fn(n, L, 0.0, -10.0))
            for n, c in zip(lens, corr)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Endpoints: correct 2 at length 0, wrong -10 at length 0, exceed at max_len; midpoint averages.
    out = R.cosine_length_reward(jnp.array([True, False, True, False]), jnp.array([0, 0, 100, 50]), max_len=100)
    np.testing.assert_allclose(out, [2.0, -10.0, -10.0, -5.0], atol=1e-5)


def ref_repetition(seq, valid_len, n, pen):
    out = np.zeros(len(seq))
    s = list(seq[:valid_len])
    for i in range(len(s) - n + 1):
        if any(s[j:j + n] == s[i:i + n] for j in range(i)):
            out[i:i + n] = pen
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_repetition_penalty_matches_reference(n):
    rng = np.random.default_rng(n)
    toks = rng.integers(0, 3, (6, 14)); lens = rng.integers(0, 15, 6)
    mask = np.arange(14)[None] < lens[:, None]
    got = R.repetition_penalty(jnp.asarray(toks), jnp.asarray(mask), ngram=n, penalty=-0.5)
    want = np.stack([ref_repetition(toks[b], lens[b], n, -0.5) for b in range(6)])
    assert (want != 0).any() and (want == 0).any()
    np.testing.assert_allclose(got, want)


def test_repetition_penalty_hand_worked():
    # "1 2 3 9 1 2 3" with n=3: the second "1 2 3" (positions 4..6) is penalised.
    toks = jnp.array([[1, 2, 3, 9, 1, 2, 3, 7]])
    mask = jnp.array([[1, 1, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_allclose(R.repetition_penalty(toks, mask, ngram=3), [[0, 0, 0, 0, -0.05, -0.05, -0.05, 0]])


def test_kimi_length_reward_matches_reference():
    rng = np.random.default_rng(1)
    lens = rng.integers(5, 50, 12); lens[4:8] = 17  # one group with equal lengths
    corr = rng.random(12) < 0.5
    got = R.kimi_length_reward(jnp.asarray(corr), jnp.asarray(lens), 4)
    want = []
    for g in range(3):
        ls, cs = lens[4 * g:4 * g + 4], corr[4 * g:4 * g + 4]
        for n, c in zip(ls, cs):
            lam = 0.0 if ls.max() == ls.min() else 0.5 - (n - ls.min()) / (ls.max() - ls.min())
            want.append(lam if c else min(0.0, lam))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Hand-worked: lengths 10, 20, 30 -> lam 0.5, 0, -0.5; a wrong shortest answer gets 0.
    np.testing.assert_allclose(R.kimi_length_reward(jnp.array([False, True, True]), jnp.array([10, 20, 30]), 3),
                               [0.0, 0.0, -0.5])


def test_overlong_penalty_hand_worked():
    got = R.overlong_penalty(jnp.array([0, 80, 90, 95, 100, 101]), max_len=100, cache_len=20)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.5, -0.75, -1.0, -1.0])


def test_invalid_action_and_exploration_bonus():
    np.testing.assert_allclose(R.invalid_action_penalty(jnp.array([True, False])), [0.0, -5.0])
    a = jnp.array([[0, 0, 2, -1, 2, 1], [1, 1, 1, 0, 0, 3]])
    m = jnp.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1]])
    got = R.exploration_bonus(a, 3, mask=m)
    np.testing.assert_allclose(got, [[1, 0, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0]])
    rng = np.random.default_rng(2)
    acts = rng.integers(0, 5, (4, 10))
    want = [[float(acts[b, t] not in acts[b, :t]) for t in range(10)] for b in range(4)]
    np.testing.assert_allclose(jax.jit(R.exploration_bonus, static_argnums=1)(jnp.asarray(acts), 5), want)


def test_bad_arguments_raise():
    z = jnp.zeros(4)
    with pytest.raises(ValueError, match="cache_len=0"):
        R.overlong_penalty(z, max_len=10, cache_len=0)
    with pytest.raises(ValueError, match="cache_len=20"):
        R.overlong_penalty(z, max_len=10, cache_len=20)
    with pytest.raises(ValueError, match="group_size=3 must divide"):
        R.kimi_length_reward(z, z, 3)
    with pytest.raises(ValueError, match="max_len=0"):
        R.cosine_length_reward(z, z, max_len=0)
    with pytest.raises(ValueError, match="ngram=0"):
        R.repetition_penalty(jnp.zeros((1, 4)), jnp.zeros((1, 4)), ngram=0)


def test_shape_rewards_cosine_and_repetition_hand_worked():
    """shaping.cosine_length swaps the env reward of a turn for the cosine length
    reward (correct = env reward > 0, the whole budget used = r_exceed) and
    shaping.repetition_ngram adds the penalty of every completion token inside
    a repeated n-gram; worked by hand for bigrams."""
    from jaxrl_lm.config import ShapingSection
    from jaxrl_lm.rewards import shape_rewards
    from jaxrl_lm.rollout import Trajectory

    # episode 0: 6 tokens "5 6 5 6 5 6", right; episode 1: the whole budget of 8, wrong
    comp = jnp.asarray([[[5, 6, 5, 6, 5, 6, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14]]])
    z = jnp.zeros((1, 2), jnp.int32)
    env_r = jnp.asarray([[1.0, 0.0]])
    traj = Trajectory(prompt=z[..., None], prompt_len=z, completion=comp,
                      completion_len=jnp.asarray([[6, 8]]), logp=jnp.zeros((1, 2, 8)),
                      active=jnp.ones((1, 2), bool), action=z, valid=jnp.ones((1, 2), bool),
                      env_reward=env_r, reward=env_r, done=jnp.ones((1, 2), bool),
                      states=SimpleNamespace(legal_action_mask=jnp.ones((1, 2, 3), bool)))
    got = shape_rewards(ShapingSection(cosine_length=True, repetition_ngram=2), traj,
                        max_new_tokens=8).reward
    cos_right_6 = 1.0 + (2.0 - 1.0) * 0.5 * (1.0 + math.cos(math.pi * 6 / 8))
    # bigrams repeated at starts 2 (5 6), 3 (6 5), 4 (5 6): tokens 2..5 covered
    np.testing.assert_allclose(np.asarray(got), [[cos_right_6 - 4 * 0.05, -10.0]], rtol=1e-6)
    plain = shape_rewards(ShapingSection(), traj, max_new_tokens=8).reward
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(env_r))


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
    # turn_penalty: on every active turn, the invalid one's stand-in included
    got = np.asarray(shape_rewards(ShapingSection(turn_penalty=-0.25), traj,
                                   max_new_tokens=8).reward)
    want = np.asarray([[0.25, 0.25], [0.25, 0.25], [0.25, 0.0], [0.25, 0.0], [0.25, 0.0]])
    np.testing.assert_allclose(got, want)
    for bad in (0.5, -2.0):
        with pytest.raises(ValueError, match="shaping.turn_penalty"):
            ShapingSection(turn_penalty=bad)


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
