"""Mastermind: feedback vs a plain-Python reference, the action <-> code map,
the consistent-guess baseline and 1000-episode invariants under jit(vmap)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import mastermind as mm


def host_feedback(guess, secret):
    """Reference: blacks by position, then whites by striking matched pegs."""
    black = sum(g == s for g, s in zip(guess, secret))
    rest_g = [g for g, s in zip(guess, secret) if g != s]
    rest_s = [s for g, s in zip(guess, secret) if g != s]
    white = 0
    for g in rest_g:
        if g in rest_s:
            rest_s.remove(g)
            white += 1
    return black, white


@pytest.mark.parametrize("colours", [6, 10])
def test_feedback_matches_host_reference(colours):
    rng = np.random.default_rng(colours)
    # Few colours in a pair forces many repeated pegs.
    guess = rng.integers(0, colours, (3000, 4))
    secret = rng.integers(0, colours, (3000, 4))
    guess[:1000] %= 2
    secret[:1000] %= 3
    fb = jax.jit(jax.vmap(lambda g, s: mm.feedback(g, s, colours)))
    black, white = map(np.asarray, fb(jnp.asarray(guess), jnp.asarray(secret)))
    ref = np.asarray([host_feedback(list(g), list(s)) for g, s in zip(guess, secret)])
    np.testing.assert_array_equal(black, ref[:, 0])
    np.testing.assert_array_equal(white, ref[:, 1])


@pytest.mark.parametrize("guess,secret,expect", [
    ((0, 0, 1, 1), (1, 1, 0, 0), (0, 4)), ((0, 1, 2, 3), (0, 1, 3, 2), (2, 2)),
    ((0, 0, 0, 0), (0, 1, 1, 1), (1, 0)), ((0, 0, 1, 2), (3, 0, 0, 0), (1, 1)),
    ((4, 4, 4, 5), (5, 4, 3, 3), (1, 1)),
])
def test_feedback_hand_worked(guess, secret, expect):
    black, white = mm.feedback(jnp.asarray(guess), jnp.asarray(secret), 6)
    assert (int(black), int(white)) == expect


@pytest.mark.parametrize("colours,repeats,count", [(6, True, 1296), (10, True, 10000),
                                                   (6, False, 360), (10, False, 5040)])
def test_action_code_map(colours, repeats, count):
    env = envs.make("mastermind", colours=colours, repeats=repeats)
    strings = env.action_strings()
    assert env.num_actions == count == len(set(strings))
    lo = 1 if colours == 6 else 0
    expect = sorted(itertools.product(range(colours), repeat=4) if repeats
                    else itertools.permutations(range(colours), 4))
    assert [tuple(int(c) - lo for c in s) for s in strings] == expect
    if repeats:  # action index = the code read as a base-`colours` number
        a = count // 3
        digits = [a // colours**p % colours for p in (3, 2, 1, 0)]
        assert strings[a] == "".join(str(d + lo) for d in digits)


def test_bad_options():
    with pytest.raises(ValueError, match="colours"):
        envs.make("mastermind", colours=7)
    with pytest.raises(ValueError, match="turns"):
        envs.make("mastermind", turns=0)
    with pytest.raises(ValueError, match="repeats"):
        envs.make("mastermind", repeats="yes")


def play(env, policy, n, seed):
    """n episodes of `env` under jit(vmap(scan)): states after each step [T, n, ...]."""
    def episode(key):
        k_init, k_run = jax.random.split(key)
        state = env.init(k_init)

        def body(s, k):
            k_act, k_step = jax.random.split(k)
            s = env.step(s, policy(env, s, k_act), k_step)
            return s, s
        _, traj = jax.lax.scan(body, state, jax.random.split(k_run, env.max_steps))
        return state, traj
    return jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(seed), n))


def test_consistent_baseline_cracks_six_colours():
    env = envs.make("mastermind")
    _, traj = play(env, mm.consistent, 200, 0)
    solved = np.asarray(traj.solved)[:, -1]
    turns = np.asarray(traj.step_count)[:, -1]
    assert solved.mean() >= 0.98, solved.mean()
    assert turns[solved].mean() < 6.0  # random consistent play averages ~4.6-5 guesses
    _, traj = play(env, mm.random, 200, 0)
    assert np.asarray(traj.solved)[:, -1].mean() < 0.05


def test_consistent_mask_always_holds_the_secret():
    env = envs.make("mastermind", colours=6, repeats=False)
    _, traj = play(env, mm.consistent, 50, 1)
    masks = jax.vmap(jax.vmap(lambda s: mm.consistent_mask(env, s)))(traj)
    secret_hit = jnp.take_along_axis(masks, traj.secret_action[..., None], axis=-1)[..., 0]
    assert bool(jnp.all(secret_hit))


@pytest.mark.parametrize("opts", [dict(), dict(colours=10, repeats=False)])
def test_random_episodes_invariants(opts):
    env = envs.make("mastermind", **opts)
    lo, hi = env.reward_range

    def policy(env, s, k):  # mostly legal, sometimes out of range
        a = jax.random.randint(k, (), -20, env.num_actions + 20)
        return jnp.where(jax.random.uniform(jax.random.fold_in(k, 1)) < 0.9,
                         jnp.clip(a, 0, env.num_actions - 1), a)
    init, traj = play(env, policy, 1000, 2)
    t = np.asarray(traj.step_count)
    done, reward = np.asarray(traj.done), np.asarray(traj.reward)
    assert done[:, -1].all() and (t <= env.max_steps).all()
    assert ((reward >= lo) & (reward <= hi)).all()
    assert (np.asarray(traj.secret) == np.asarray(init.secret)[:, None]).all()
    codes = env.codes
    np.testing.assert_array_equal(codes[np.asarray(init.secret_action)], np.asarray(init.secret))
    # Once done, nothing changes and the reward is 0 (absorbing terminal).
    after = done[:, :-1]
    assert (reward[:, 1:][after] == 0).all()
    # Recorded feedback agrees with the host reference on every shown guess.
    last = jax.tree.map(lambda x: np.asarray(x[:, -1]), traj)
    for e in range(0, 1000, 37):
        for i in range(int(last.step_count[e])):
            g = codes[last.guesses[e, i]]
            assert host_feedback(list(g), list(last.secret[e])) == (
                last.black[e, i], last.white[e, i])
    # Success iff rewarded 1, and solved episodes end on the secret.
    solved = last.solved
    np.testing.assert_array_equal(solved, reward.max(axis=1) == 1.0)
    n = last.step_count[solved] - 1
    np.testing.assert_array_equal(last.guesses[solved, n], last.secret_action[solved])


def test_render_matches_host_text():
    env = envs.make("mastermind", colours=10, turns=8)
    _, traj = play(env, mm.random, 3, 3)
    pieces = env.text_pieces()
    render = jax.jit(env.render_pieces)
    for e in range(3):
        for t in range(0, env.max_steps, 3):
            s = jax.tree.map(lambda x: np.asarray(x[e, t]), traj)
            idx = np.asarray(render(s))
            assert len(idx) == env.max_render_pieces
            assert "".join(pieces[i] for i in idx if i >= 0) == env.render_text(s)
    init = env.init(jax.random.key(0))
    assert env.render_text(init).endswith("Turns left: 8. Answer with ACTION=<code like 1234>.\n")
