"""Battleship: jitted ship placement (in bounds, straight, never overlapping),
hit/sink bookkeeping vs a plain-Python replay, hunt/target vs random, and
1000-episode invariants under jit(vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import battleship as bs


def check_layout(ship, size, lengths):
    """Host check of one layout: each ship a straight contiguous in-bounds line."""
    ship = np.asarray(ship).reshape(size, size)
    assert ((ship >= 0) & (ship <= len(lengths))).all()
    for j, length in enumerate(lengths):
        r, c = np.nonzero(ship == j + 1)
        assert len(r) == length  # fewer cells would mean a later ship overwrote it
        straight = ((r == r[0]).all() and sorted(c) == list(range(c.min(), c.min() + length))) or \
                   ((c == c[0]).all() and sorted(r) == list(range(r.min(), r.min() + length)))
        assert straight, ship


@pytest.mark.parametrize("opts", [dict(), dict(size=5, ships=(5, 5, 4, 3, 2)),
                                  dict(size=9, ships=(5, 4, 3, 3, 2), shots=40)])
def test_placement_in_bounds_and_disjoint(opts):
    env = envs.make("battleship", **opts)
    n = 2000
    states = jax.jit(jax.vmap(env.init))(jax.random.split(jax.random.key(0), n))
    ship = np.asarray(states.ship)
    for e in range(n):
        check_layout(ship[e], env.size, env.ships)
    # Every cell is used by some layout and both orientations occur.
    assert (ship > 0).any(axis=0).all()
    first = ship.reshape(n, env.size, env.size) == 1
    horizontal = first.any(axis=2).sum(axis=1) == 1
    assert 0.2 < horizontal.mean() < 0.8


def test_bad_options():
    for bad, field in [(dict(size=4), "size"), (dict(ships=(3, 1)), "ships"),
                       (dict(ships=[3, 1]), "ships"), (dict(ships=(2,) * 6), "ships"),
                       (dict(shots=5), "shots"), (dict(hit_reward=1.0), "hit_reward")]:
        with pytest.raises(ValueError, match=field):
            envs.make("battleship", **bad)


def test_a_yaml_list_is_the_tuple_it_stands_for():
    # config files give `ships: [3, 2]`; envs.make hands the env the tuple it holds
    assert envs.make("battleship", ships=[3, 2]) == envs.make("battleship", ships=(3, 2))
    assert envs.make("battleship", ships=[3, 2]).ships == (3, 2)


def play(env, policy, n, seed):
    """n episodes under jit(vmap(scan)): (initial states, states after each step, actions)."""
    def episode(key):
        k_init, k_run = jax.random.split(key)
        state = env.init(k_init)

        def body(s, k):
            k_act, k_step = jax.random.split(k)
            a = policy(env, s, k_act)
            s = env.step(s, a, k_step)
            return s, (s, a)
        _, (traj, actions) = jax.lax.scan(body, state, jax.random.split(k_run, env.max_steps))
        return state, traj, actions
    return jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(seed), n))


def host_replay(ship, actions, lengths, shots, hit_reward):
    """Plain-Python game: rewards per step and the final hit/sunk bookkeeping."""
    left = list(lengths)
    fired, rewards, done = set(), [], False
    for a in actions:
        if done:
            rewards.append(0.0)
            continue
        a = int(a)
        if a < 0 or a >= len(ship) or a in fired:
            rewards.append(-1.0)  # illegal="end"
            done = True
            continue
        fired.add(a)
        r = 0.0
        if ship[a]:
            left[ship[a] - 1] -= 1
            r += hit_reward
        if all(x == 0 for x in left):
            r += 1.0
            done = True
        rewards.append(r)
        done = done or len(rewards) >= shots
    return np.float32(rewards), left, fired


def test_bookkeeping_matches_host_replay():
    env = envs.make("battleship", hit_reward=0.125)
    lo, hi = env.reward_range

    def policy(env, s, k):  # hunt/target, but now and then a repeat or off-board shot
        a = bs.hunt_target(env, s, k)
        u = jax.random.uniform(jax.random.fold_in(k, 1))
        return jnp.where(u < 0.02, 40, jnp.where(u < 0.05, 0, a))
    init, traj, actions = play(env, policy, 1000, 0)
    ship, acts = np.asarray(init.ship), np.asarray(actions)
    rewards = np.asarray(traj.reward)
    assert ((rewards >= lo) & (rewards <= hi)).all()
    for e in range(0, 1000, 7):
        ref, left, fired = host_replay(ship[e], acts[e], env.ships, env.shots, env.hit_reward)
        np.testing.assert_array_equal(rewards[e], ref)
        if (ref == -1.0).any():
            # core.Env.step plays action 0 in the state an illegal "end" leaves
            # behind; only the reward and done of that step are specified.
            continue
        last = jax.tree.map(lambda x: np.asarray(x[e, -1]), traj)
        np.testing.assert_array_equal(last.hits_left, left)
        assert set(np.nonzero(last.shot)[0]) == fired
        assert bool(last.won) == all(x == 0 for x in left)
        np.testing.assert_array_equal(last.legal_action_mask, ~last.shot)


def test_random_episodes_invariants():
    env = envs.make("battleship")
    init, traj, actions = play(env, bs.random, 1000, 1)
    done, reward = np.asarray(traj.done), np.asarray(traj.reward)
    t = np.asarray(traj.step_count)
    assert done[:, -1].all() and (t <= env.max_steps).all()
    assert set(np.unique(reward)) <= {0.0, 1.0}
    assert (np.asarray(traj.ship) == np.asarray(init.ship)[:, None]).all()
    assert (reward[:, 1:][done[:, :-1]] == 0).all()
    # Legal random shots never repeat a cell within an episode.
    acts = np.asarray(actions)
    live = ~np.concatenate([np.zeros((1000, 1), bool), done[:, :-1]], axis=1)
    for e in range(1000):
        a = acts[e][live[e]]
        assert len(set(a.tolist())) == len(a)
    np.testing.assert_array_equal(np.asarray(traj.won)[:, -1], reward.max(axis=1) == 1.0)


def shots_to_win(env, policy, n, seed):
    _, traj, _ = play(env, policy, n, seed)
    won = np.asarray(traj.won)[:, -1]
    return np.where(won, np.asarray(traj.step_count)[:, -1], env.max_steps + 1), won


def test_hunt_target_beats_random():
    full = envs.make("battleship", shots=36)  # no truncation: every game is won
    smart, won = shots_to_win(full, bs.hunt_target, 300, 2)
    blind, won_r = shots_to_win(full, bs.random, 300, 2)
    assert won.all() and won_r.all()
    assert smart.mean() < 0.7 * blind.mean(), (smart.mean(), blind.mean())
    # Within the default 20 shots: most games vs almost none.
    assert (smart <= 20).mean() > 0.65 and (blind <= 20).mean() < 0.05


def test_render_matches_host_text():
    env = envs.make("battleship", size=7, ships=(4, 3, 2), shots=30)
    _, traj, _ = play(env, bs.hunt_target, 3, 4)
    pieces, render = env.text_pieces(), jax.jit(env.render_pieces)
    for e in range(3):
        for t in range(0, env.max_steps, 2):
            s = jax.tree.map(lambda x: np.asarray(x[e, t]), traj)
            idx = np.asarray(render(s))
            assert len(idx) == env.max_render_pieces
            assert "".join(pieces[i] for i in idx if i >= 0) == env.render_text(s)
    s = jax.tree.map(lambda x: np.asarray(x[0, -1]), traj)
    text = env.render_text(s)
    board = text.split("\n")[2:2 + env.size]
    sunk = sum(n for n, h in zip(env.ships, s.hits_left) if h == 0)
    assert "".join(board).count("#") == sunk
    assert "".join(board).count("o") == int(np.sum(s.shot & (s.ship == 0)))
    assert env.action_strings()[:8] == ("A1", "B1", "C1", "D1", "E1", "F1", "G1", "A2")
