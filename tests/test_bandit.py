"""Bandit and best-arm specifics, against numpy references and hand-worked
renders."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import bandit, best_arm

# Tests compile many small programs once and run them briefly: XLA's
# cheapest backend optimisation level compiles ~3x faster here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def play(env, policy, key, n):
    """n episodes of `policy` (a baseline) under jit(vmap(scan)); returns
    per-step actions, rewards and states (stacked over steps)."""

    def episode(key):
        k0, k1 = jax.random.split(key)

        def body(state, k):
            ka, ks = jax.random.split(k)
            a = policy(env, state, ka)
            new = env.step(state, a, ks)
            return new, (a, new)

        return jax.lax.scan(body, env.init(k0), jax.random.split(k1, env.max_steps))[1]

    out = jit(jax.vmap(episode))(jax.random.split(key, n))
    return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("dist", ["gaussian", "bernoulli"])
def test_bandit_bookkeeping_matches_numpy(dist):
    env = envs.make("bandit", k=4, dist=dist, sigma=3.0, horizon=30, context=7)
    acts, states = play(env, bandit.random, jax.random.PRNGKey(0), 16)
    rewards = states.reward.astype(np.float64)
    for b in range(16):
        mu = states.mu[b, 0].astype(np.float64)
        regret = mu.max() - mu[acts[b]]
        np.testing.assert_allclose(states.regret[b], regret, rtol=0, atol=1e-6)
        np.testing.assert_allclose(states.total_regret[b], np.cumsum(regret), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(states.counts[b, -1], np.bincount(acts[b], minlength=4))
        sums = np.zeros(4)
        np.add.at(sums, acts[b], rewards[b])
        np.testing.assert_allclose(states.sums[b, -1], sums, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(states.hist_action[b, -1], acts[b, -7:])
        np.testing.assert_array_equal(states.hist_reward[b, -1], np.round(rewards[b, -7:] * 100))
        shown = np.zeros(4, np.int64)
        np.add.at(shown, acts[b], np.round(rewards[b] * 100).astype(np.int64))
        np.testing.assert_array_equal(states.shown_sums[b, -1], shown)
        assert states.optimal_arm[b, 0] == np.argmax(mu)
        assert np.all(states.done[b] == (np.arange(30) == 29) | (np.arange(30) > 29))
    lo, hi = env.reward_range
    assert rewards.min() >= lo and rewards.max() <= hi
    if dist == "bernoulli":
        assert set(np.unique(rewards)) <= {0.0, 1.0}


@pytest.mark.parametrize("dist,sigma", [("gaussian", 0.1), ("gaussian", 3.0), ("bernoulli", 1.0)])
def test_reward_moments(dist, sigma):
    """Pulling arm 0 many times: mean mu_0, std sigma (or sqrt(p(1-p)))."""
    env = envs.make("bandit", k=2, dist=dist, sigma=sigma)
    state = env.init(jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), 20000)
    r = np.asarray(jit(jax.vmap(lambda k: env.step(state, 0, k).reward))(keys), np.float64)
    mu = float(state.mu[0])
    std = sigma if dist == "gaussian" else np.sqrt(mu * (1 - mu))
    assert abs(r.mean() - mu) < 5 * std / np.sqrt(r.size)
    assert abs(r.std() - std) < 0.05 * std
    # expected_reward (shaping.expected_reward trains on it) is that mean, per arm
    assert env.has_expected_reward
    for arm in (0, 1):
        assert float(env.expected_reward(state, arm)) == float(state.mu[arm])


def test_expected_reward_only_where_defined():
    env = envs.make("tictactoe")
    assert not env.has_expected_reward
    with pytest.raises(ValueError, match="'tictactoe' has no expected_reward"):
        env.expected_reward(env.init(jax.random.PRNGKey(0)), 0)


def test_ucb_beats_random_and_greedy_explores_once():
    env = envs.make("bandit", k=5, sigma=1.0)
    key = jax.random.PRNGKey(3)
    runs = {n: play(env, bandit.BASELINES[n], key, 256) for n in ("ucb", "greedy", "random")}
    regret = {n: run[1].total_regret[:, -1].mean() for n, run in runs.items()}
    # Random's expected regret is 50 * (E max - 1/2) = 50 * (5/6 - 1/2).
    assert abs(regret["random"] - 50 / 3) < 1.0
    assert regret["ucb"] < 0.75 * regret["random"]
    assert all(sorted(a[:5]) == list(range(5)) for a in runs["greedy"][0])


def test_bandit_render_hand_worked():
    env = envs.make("bandit", k=3, horizon=20, context=2)
    state = env.init(jax.random.PRNGKey(0)).replace(
        step_count=jnp.int32(11), hist_action=jnp.asarray([2, 0]),
        hist_reward=jnp.asarray([-305, 7]))
    want = ("Bandit: 3 arms (0-2), 20 pulls. Maximize total reward.\n"
            "Step=10 Action=2 Reward=-3.05\nStep=11 Action=0 Reward=0.07\n"
            "Pulls left: 9. Answer with ACTION=<arm>.\n")
    assert env.render_text(jax.tree.map(np.asarray, state)) == want
    pieces = env.text_pieces()
    idx = np.asarray(jit(env.render_pieces)(state))
    assert "".join(pieces[i] for i in idx if i >= 0) == want


def test_bandit_summary_render_hand_worked():
    # means of shown rewards: -3.05 / 2 = -1.525 -> -1.52 (half up), 0.07, untried, -10.00
    env = envs.make("bandit", k=4, horizon=20, sigma=3.0, render="summary")
    state = env.init(jax.random.PRNGKey(0)).replace(
        step_count=jnp.int32(4), counts=jnp.asarray([2, 1, 0, 1]),
        shown_sums=jnp.asarray([-305, 7, 0, -1000]))
    want = ("Step  4/20\n0: 2  -1.52\n1: 1   0.07\n2: 0      -\n3: 1 -10.00\n"
            "Answer ACTION=<arm>\n")
    assert env.render_text(jax.tree.map(np.asarray, state)) == want
    idx = np.asarray(jit(env.render_pieces)(state))
    assert "".join(env.text_pieces()[i] for i in idx if i >= 0) == want
    assert len(idx) == env.max_render_pieces and np.all(idx >= 0)  # one fixed length
    assert [int(bandit.mean_hundredths(s, n)) for s, n in [(5, 2), (-5, 2), (7, 3), (-7, 3)]] == [
        3, -2, 2, -2]


def test_best_arm_rules_and_baselines():
    env = envs.make("best_arm", k=4, budget=12)
    acts, states = play(env, best_arm.uniform_then_commit, jax.random.PRNGKey(4), 512)
    # Round robin: 3 pulls per arm, then a choice at step 13 that ends it.
    assert np.all(acts[:, :12] == np.arange(12) % 4)
    assert np.all(states.counts[:, -1] == 3) and np.all(states.done[:, 12])
    assert np.all(~states.legal_action_mask[:, 11, :4]) and np.all(states.legal_action_mask[:, 11, 4:])
    mu = states.mu[:, 0]
    means = states.sums[:, 11] / 3
    np.testing.assert_array_equal(acts[:, 12], 4 + np.argmax(means, axis=1))
    success = np.argmax(means, axis=1) == np.argmax(mu, axis=1)
    np.testing.assert_array_equal(states.success[:, 12], success)
    np.testing.assert_array_equal(states.reward.sum(1), success.astype(np.float32))
    _, rand = play(env, best_arm.random, jax.random.PRNGKey(5), 512)
    assert states.success.any(1).mean() > rand.success.any(1).mean() + 0.1
    assert set(np.unique(rand.reward)) <= {0.0, 1.0}


def test_best_arm_render_hand_worked():
    env = envs.make("best_arm", k=2, budget=3, dist="gaussian")
    state = env.init(jax.random.PRNGKey(0)).replace(
        step_count=jnp.int32(3), counts=jnp.asarray([2, 1]), shown_sums=jnp.asarray([-1234, 50]))
    want = ("Best arm: 2 arms (0-1), 3 pulls, then choose the arm with the highest mean.\n"
            "Arm 0: pulls=2 total=-12.34\nArm 1: pulls=1 total=0.50\n"
            "Pulls left: 0. Answer with ACTION=choose:<arm>.\n")
    assert env.render_text(jax.tree.map(np.asarray, state)) == want
    idx = np.asarray(env.render_pieces(state))
    assert "".join(env.text_pieces()[i] for i in idx if i >= 0) == want


@pytest.mark.parametrize("name,opts", [
    ("bandit", dict(k=1)), ("bandit", dict(sigma=2.0)), ("bandit", dict(dist="cauchy")),
    ("bandit", dict(horizon=0)), ("bandit", dict(render="table")), ("best_arm", dict(budget=0)), ("best_arm", dict(k=51)),
])
def test_bad_options(name, opts):
    field = next(iter(opts))
    with pytest.raises(ValueError, match=field):
        envs.make(name, **opts)
