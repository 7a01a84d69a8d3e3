"""Minesweeper: flood fill vs a host BFS, mine placement, invariants, baselines, text."""
from collections import deque

import jax
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs import minesweeper as ms


def _near(n, i, j):
    return [(a, b) for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
            if (a, b) != (i, j) and 0 <= a < n and 0 <= b < n]


def _bfs_reveal(mine, n, cell):
    """Host reference: cells uncovered by clicking `cell` (classic BFS flood fill)."""
    mine = mine.reshape(n, n)
    count = {(i, j): sum(mine[a, b] for a, b in _near(n, i, j)) for i in range(n) for j in range(n)}
    out, queue = set(), deque([divmod(int(cell), n)])
    while queue:
        c = queue.popleft()
        if c in out:
            continue
        out.add(c)
        if not mine[c] and count[c] == 0:
            queue.extend(_near(n, *c))
    res = np.zeros((n, n), bool)
    for c in out:
        res[c] = True
    return res.reshape(-1), np.array([count[divmod(k, n)] for k in range(n * n)])


def _np(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("bad,field", [
    (dict(size=3), "size"), (dict(size=9), "size"), (dict(mines=0), "mines"),
    (dict(mines=17), "mines"), (dict(size=4, mines=8), "mines"), (dict(illegal="skip"), "illegal")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=field):
        envs.make("minesweeper", **bad)


@pytest.mark.parametrize("size,mines,episodes", [(5, 4, 1000), (8, 12, 150)])
def test_random_episodes_match_bfs_reference(size, mines, episodes):
    env = envs.make("minesweeper", size=size, mines=mines)
    s0, tr, acts = _np(pu.play(env, ms.BASELINES["random"], jax.random.key(size), episodes))
    n2, lo_hi = size * size, env.reward_range
    assert tr.done[:, -1].all() and (tr.reward >= lo_hi[0]).all() and (tr.reward <= lo_hi[1]).all()
    for e in range(episodes):
        mine = tr.mine[e, 0]
        assert mine.sum() == mines
        r0, c0 = divmod(int(acts[e, 0]), size)
        zone = [(a, b) for a in range(r0 - 1, r0 + 2) for b in range(c0 - 1, c0 + 2)
                if 0 <= a < size and 0 <= b < size]
        assert not any(mine.reshape(size, size)[z] for z in zone), "first reveal zone has a mine"
        revealed, done = s0.revealed[e], False
        for t in range(env.max_steps):
            if done:
                assert tr.reward[e, t] == 0
                continue
            a = int(acts[e, t])
            assert not revealed[a], "policy picked a revealed cell"
            assert (tr.mine[e, t] == mine).all(), "mine layout changed within an episode"
            uncovered, count = _bfs_reveal(mine, size, a)
            assert (tr.count[e, t] == count).all()
            revealed = revealed | uncovered
            np.testing.assert_array_equal(tr.revealed[e, t], revealed)
            hit, won = mine[a], revealed.sum() == n2 - mines
            assert tr.reward[e, t] == (-1.0 if hit else 1.0 if won else 0.0)
            done = hit or won
            assert tr.done[e, t] == done
            np.testing.assert_array_equal(tr.legal_action_mask[e, t], ~revealed)


def test_logic_beats_random():
    env = envs.make("minesweeper")
    wins = {}
    for name, policy in ms.BASELINES.items():
        _, tr, _ = _np(pu.play(env, policy, jax.random.key(7), 1000))
        wins[name] = tr.won[:, -1].mean()
        assert tr.done[:, -1].all()
    assert list(ms.BASELINES)[0] == "logic"
    assert wins["logic"] > 0.6 and wins["logic"] > wins["random"] + 0.25, wins


def test_text_render_matches_host_and_actions():
    env = envs.make("minesweeper", size=6, mines=7)
    s0, tr, _ = pu.play(env, ms.BASELINES["logic"], jax.random.key(3), 12)
    pieces = env.text_pieces()
    render = np.asarray(jax.jit(jax.vmap(jax.vmap(env.render_pieces)))(tr))
    s0, tr = _np(s0), _np(tr)
    assert render.shape[-1] == env.max_render_pieces
    for e in range(12):
        for t in range(env.max_steps):
            state = jax.tree.map(lambda x: x[e, t], tr)
            text = env.render_text(state)
            assert "".join(pieces[i] for i in render[e, t] if i >= 0) == text
            assert len(text) <= 300
    first = env.render_text(jax.tree.map(lambda x: x[0], s0))
    assert "1 ######\n" in first and "  ABCDEF\n" in first
    acts = env.action_strings()
    assert len(set(acts)) == env.num_actions and acts[0] == "A1" and acts[6 + 2] == "C2"
