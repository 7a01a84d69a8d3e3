"""Tic-tac-toe: game logic against pgx, the minimax table against a plain
recursive negamax, exhaustive no-loss checks, opponents, text, options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pgx
import pytest

from jaxrl_lm import envs
from jaxrl_lm.envs import _tictactoe_tables as tables
from jaxrl_lm.envs._tictactoe_mcts import mcts_move
from jaxrl_lm.envs.tictactoe import BASELINES

# Small programs, run briefly: XLA's cheapest optimisation level compiles faster.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# Written out independently of envs/_tictactoe_tables.LINES.
WIN_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def ref_winner(b):
    for i, j, k in WIN_LINES:
        if b[i] and b[i] == b[j] == b[k]:
            return b[i]
    return 0


@functools.lru_cache(maxsize=None)
def ref_negamax(b, p):
    """(depth-aware score for mark p to move, optimal moves) by plain recursion."""
    empties = [i for i in range(9) if b[i] == 0]
    if ref_winner(b):
        return -(1 + len(empties)), ()
    if not empties:
        return 0, ()
    scores = {i: -ref_negamax(b[:i] + (p,) + b[i + 1:], 3 - p)[0] for i in empties}
    best = max(scores.values())
    return best, tuple(i for i in empties if scores[i] == best)


@functools.lru_cache(maxsize=None)
def ref_value(b, p):
    """Plain game value (+1 / 0 / -1) for mark p to move, no depth term."""
    empties = [i for i in range(9) if b[i] == 0]
    if ref_winner(b):
        return -1
    if not empties:
        return 0
    return max(-ref_value(b[:i] + (p,) + b[i + 1:], 3 - p) for i in empties)


def reachable():
    """{board tuple: mark to move} for every position reachable from the empty board."""
    seen, stack = {}, [((0,) * 9, 1)]
    while stack:
        b, p = stack.pop()
        if b in seen:
            continue
        seen[b] = p
        if not ref_winner(b):
            stack += [(b[:i] + (p,) + b[i + 1:], 3 - p) for i in range(9) if b[i] == 0]
    return seen


REACH = reachable()


def code_of(b):
    return sum(v * 3**i for i, v in enumerate(b))


@functools.lru_cache(maxsize=None)
def play(env, agents, n, seed=0):
    """jit(vmap) episodes, episode g played by agents[g % len(agents)] (BASELINES
    entries): (init state [n], trajectory [5, n]). Cached: tests share rollouts."""
    def one(key, which):
        k0, key = jax.random.split(key)
        s0 = env.init(k0)

        def body(s, k):
            ka, ks = jax.random.split(k)
            action = jnp.stack([agent(env, s, ka) for agent in agents])[which]
            s = env.step(s, action, ks)
            return s, s

        return s0, jax.lax.scan(body, s0, jax.random.split(key, 5))[1]

    keys = jax.random.split(jax.random.key(seed), n)
    s0, traj = jit(jax.vmap(one))(keys, jnp.arange(n) % len(agents))
    return jax.device_get((s0, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), traj)))


RANDOM, MINIMAX = (BASELINES["random"],), (BASELINES["minimax"],)


# --- game logic vs pgx -------------------------------------------------------
def plies_of(env, s0, traj, g):
    """The game's move list in play order and, per agent step, the ply count after it."""
    me, opp = env.me, 3 - env.me
    moves = [int(np.flatnonzero(s0.board[g])[0])] if env.agent_player == "o" else []
    after, before = [], s0.board[g]
    for t in range(5):
        board = traj.board[t, g]
        new = [(int(board[c]), int(c)) for c in np.flatnonzero(board != before)]
        moves += [c for m, c in new if m == me] + [c for m, c in new if m == opp]
        after.append(len(moves))
        if traj.done[t, g]:
            break
        before = board
    return moves, after


@pytest.mark.parametrize("side", ["x", "o"])
def test_agrees_with_pgx(side):
    env = envs.make("tictactoe", agent_player=side, opponent="random")
    n = 300
    s0, traj = play(env, RANDOM, n, seed=1)
    games = [plies_of(env, s0, traj, g) for g in range(n)]
    moves = np.full((n, 9), -1, np.int32)
    for g, (m, _) in enumerate(games):
        moves[g, :len(m)] = m
    pg = pgx.make("tic_tac_toe")

    def replay(key, moves_9):
        s = pg.init(key)

        def body(s, move):
            new = pg.step(s, jnp.maximum(move, 0))
            s = jax.tree.map(lambda a, b: jnp.where(move >= 0, a, b), new, s)
            return s, (s._x.board, s.terminated, s.rewards, s.legal_action_mask, s._x.winner)

        return s.current_player, jax.lax.scan(body, s, moves_9)[1]

    first, (board, term, rewards, legal, winner) = jax.device_get(
        jit(jax.vmap(replay))(jax.random.split(jax.random.key(2), n), moves))
    for g, (m, after) in enumerate(games):
        agent_id = first[g] if side == "x" else 1 - first[g]  # pgx: X moves first
        prev = 0
        for t, p in enumerate(after):
            q = p - 1
            np.testing.assert_array_equal(traj.board[t, g], board[g, q] + 1)
            assert traj.done[t, g] == term[g, q]
            assert traj.winner[t, g] == winner[g, q] + 1
            assert traj.reward[t, g] == rewards[g, prev:p, agent_id].sum()
            if not term[g, q]:  # pgx sets every action legal on terminal states
                np.testing.assert_array_equal(traj.legal_action_mask[t, g], legal[g, q])
            prev = p
        assert traj.done[len(after) - 1, g]


# --- the minimax table ---------------------------------------------------------
def test_tables_match_plain_negamax():
    assert len(REACH) == 5478  # the known number of legal tic-tac-toe positions
    boards = list(REACH)
    codes = jnp.asarray([code_of(b) for b in boards], jnp.int32)
    opt = np.asarray(jit(jax.vmap(tables.opt_bits))(codes))
    status = np.asarray(jit(jax.vmap(tables.status_of))(codes))
    for b, o, st in zip(boards, opt, status):
        score, best = ref_negamax(b, REACH[b])
        w = ref_winner(b)
        assert st == (w if w else (3 if all(b) else 0))
        assert tables.SCORE[code_of(b)] == score
        assert np.sign(score) == ref_value(b, REACH[b])
        assert sorted(i for i in range(9) if o >> i & 1) == sorted(best)


@pytest.mark.parametrize("minimax_mark", [1, 2])
def test_minimax_never_loses(minimax_mark):
    """Every optimal move of minimax vs every reply: from every reachable
    position, its worst outcome equals the game value (never loses unless lost)."""
    opt = np.asarray(jit(jax.vmap(tables.opt_bits))(jnp.arange(tables.NUM_CODES)))

    @functools.lru_cache(maxsize=None)
    def worst(b):  # worst outcome for minimax_mark over the tree below b
        w = ref_winner(b)
        if w or all(b):
            return 0 if not w else (1 if w == minimax_mark else -1)
        p = REACH[b]
        cells = [i for i in range(9) if opt[code_of(b)] >> i & 1] if p == minimax_mark else [
            i for i in range(9) if b[i] == 0]
        assert cells and all(b[i] == 0 for i in cells)
        return min(worst(b[:i] + (p,) + b[i + 1:]) for i in cells)

    assert worst((0,) * 9) == 0
    for b, p in REACH.items():
        if p == minimax_mark and not ref_winner(b) and not all(b):
            assert worst(b) == ref_value(b, p), b


def test_bit_board_views_match_references():
    """The state's board / code / winner, computed from its two bit sets,
    against the plain references on every reachable position."""
    boards = np.asarray(list(REACH))
    s = envs.make("tictactoe").init(jax.random.key(0))
    s = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(boards),) + x.shape), s).with_board(boards)
    np.testing.assert_array_equal(s.x, [bits_of(b, 1) for b in REACH])
    np.testing.assert_array_equal(s.o, [bits_of(b, 2) for b in REACH])
    np.testing.assert_array_equal(s.board, boards)
    np.testing.assert_array_equal(s.code, [code_of(b) for b in REACH])
    np.testing.assert_array_equal(s.winner, [ref_winner(b) for b in REACH])
    np.testing.assert_array_equal(s.legal_action_mask, boards == 0)


def test_minimax_baseline_picks_every_optimal_move():
    boards = [b for b in REACH if not ref_winner(b) and not all(b)]
    codes = np.asarray([code_of(b) for b in boards])
    states = envs.make("tictactoe").init(jax.random.key(0))
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(boards),) + x.shape), states)
    states = states.with_board(np.asarray(boards))
    np.testing.assert_array_equal(states.code, codes)
    pick = jit(jax.vmap(jax.vmap(lambda s, k: BASELINES["minimax"](None, s, k), (None, 0)),
                            (0, None)))
    cells = np.asarray(pick(states, jax.random.split(jax.random.key(1), 64)))
    for b, row in zip(boards, cells):
        assert set(row.tolist()) == set(ref_negamax(b, REACH[b])[1]), b


@pytest.mark.parametrize("side", ["x", "o"])
def test_minimax_vs_minimax_draws_and_random_never_wins(side):
    env = envs.make("tictactoe", agent_player=side, opponent="minimax")
    _, traj = play(env, MINIMAX + RANDOM, 1000, seed=3)  # even: minimax, odd: random
    assert traj.done[-1].all()
    assert (traj.reward[:, ::2] == 0).all()
    assert (traj.reward[:, 1::2] < 1).all() and (traj.reward[:, 1::2] == -1).any()


# --- other opponents -------------------------------------------------------------
def test_mcts_opponent_beats_random():
    env = envs.make("tictactoe", agent_player="x", opponent="mcts", mcts_simulations=64)
    _, traj = play(env, RANDOM, 100, seed=5)
    total = traj.reward.sum(0)
    # random vs random: X wins 58%, loses 29%
    assert (total == 1).mean() < 0.1 and (total == -1).mean() > 0.6
    # UCT finds an immediate win: O to move at X X . / O O . / . . X wins at cell 5
    board = (1, 1, 0, 2, 2, 0, 0, 0, 1)
    move = jit(lambda k: mcts_move(code_of(board), 2, k, 64))
    assert int(move(jax.random.key(6))) == 5


def bits_of(b, mark):
    return sum(1 << i for i, v in enumerate(b) if v == mark)


def opponent_moves(env, b, n, seed=0):
    mine, theirs = bits_of(b, env.me), bits_of(b, 3 - env.me)
    mv = jit(jax.vmap(lambda k: env.opponent_move(jnp.int32(mine), jnp.int32(theirs), k)))
    return np.asarray(mv(jax.random.split(jax.random.key(seed), n)))


def test_noisy_opponent_rates():
    b = (0, 0, 0, 0, 1, 0, 0, 0, 0)  # O to move: corners optimal, edges lose
    noisy = {r: envs.make("tictactoe", opponent="noisy", noise=r) for r in (0.0, 0.5, 1.0)}
    mm = opponent_moves(envs.make("tictactoe", opponent="minimax"), b, 4000)
    rnd = opponent_moves(envs.make("tictactoe", opponent="random"), b, 4000)
    np.testing.assert_array_equal(opponent_moves(noisy[0.0], b, 4000), mm)
    np.testing.assert_array_equal(opponent_moves(noisy[1.0], b, 4000), rnd)
    assert set(mm.tolist()) == {0, 2, 6, 8}
    counts = np.bincount(rnd, minlength=9)
    assert counts[4] == 0 and np.abs(counts[[0, 1, 2, 3, 5, 6, 7, 8]] / 4000 - 1 / 8).max() < 0.025
    edges = np.isin(opponent_moves(noisy[0.5], b, 20000, seed=1), [1, 3, 5, 7]).mean()
    assert abs(edges - 0.5 * 4 / 8) < 0.015


def test_first_move_uniform_even_from_plain_seeds():
    env = envs.make("tictactoe", agent_player="o", opponent="random")
    for keys in (jax.random.split(jax.random.key(7), 9000),
                 jax.vmap(jax.random.key)(jnp.arange(9000))):
        board = np.asarray(jit(jax.vmap(env.init))(keys).board)
        assert ((board == 1).sum(1) == 1).all() and (board == 2).sum() == 0
        freq = np.bincount(np.argmax(board, 1), minlength=9) / 9000
        assert np.abs(freq - 1 / 9).max() < 0.015  # ~4.5 sigma


# --- text, options -----------------------------------------------------------------
def test_render_matches_pieces_and_hand_worked_prompt():
    env = envs.make("tictactoe", agent_player="o", opponent="random")
    s0, traj = play(env, RANDOM, 300, seed=1)  # shared with test_agrees_with_pgx
    traj = jax.tree.map(lambda x: x[:, :20], traj)
    render = jit(jax.vmap(jax.vmap(env.render_pieces)))
    pieces, text_pieces = np.asarray(render(traj)), env.text_pieces()
    for t in range(5):
        for g in range(20):
            s = jax.tree.map(lambda x: x[t, g], traj)
            text = env.render_text(s)
            assert "".join(text_pieces[i] for i in pieces[t, g] if i >= 0) == text
            assert len(text) <= 250 and pieces.shape[-1] == env.max_render_pieces
    s = jax.tree.map(lambda x: x[0], s0)
    s = s.with_board([1, 0, 2, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.legal_action_mask, [0, 1, 0, 1, 0, 1, 1, 1, 1])
    assert env.render_text(s) == (
        "Tic-tac-toe: get 3 in a row. You are O. Cells 1-9, row by row.\n"
        "X|.|O\n.|X|.\n.|.|.\nLegal: 2 4 6 7 8 9\nAnswer with ACTION=<cell>.\n")
    assert env.action_strings() == tuple("123456789")


def test_short_prompt_numbers_free_cells():
    env = envs.make("tictactoe", agent_player="o", opponent="random", prompt="short")
    _, traj = play(env, RANDOM, 300, seed=1)
    traj = jax.tree.map(lambda x: x[:, :20], traj)
    pieces = np.asarray(jit(jax.vmap(jax.vmap(env.render_pieces)))(traj))
    text_pieces = env.text_pieces()
    for t in range(5):
        for g in range(20):
            s = jax.tree.map(lambda x: x[t, g], traj)
            board = np.asarray(s.board)
            text = env.render_text(s)
            assert "".join(text_pieces[i] for i in pieces[t, g] if i >= 0) == text
            # the digits shown are exactly the free cells
            shown = sorted(int(c) - 1 for c in text if c.isdigit())
            assert shown == [i for i in range(9) if board[i] == 0]
    s = jax.tree.map(lambda x: x[0, 0], traj)
    s = s.with_board([1, 0, 2, 0, 1, 0, 0, 0, 0])
    assert env.render_text(s) == "You are O.\nX|2|O\n4|X|6\n7|8|9\nMove?\n"


def test_board_prompt_is_the_short_board_without_header_and_footer():
    """prompt="board": the mark on its own line, then the short prompt's board."""
    short = envs.make("tictactoe", agent_player="o", opponent="random", prompt="short")
    board = envs.make("tictactoe", agent_player="o", opponent="random", prompt="board")
    _, traj = play(short, RANDOM, 100, seed=2)
    pieces = np.asarray(jit(jax.vmap(jax.vmap(board.render_pieces)))(traj))
    text_pieces = board.text_pieces()
    for t in range(5):
        for g in range(10):
            s = jax.tree.map(lambda x: x[t, g], traj)
            text = board.render_text(s)
            assert "".join(text_pieces[i] for i in pieces[t, g] if i >= 0) == text
            assert text == "O\n" + short.render_text(s)[len("You are O.\n"):-len("Move?\n")]
    s = jax.tree.map(lambda x: x[0, 0], traj)
    s = s.with_board([1, 0, 2, 0, 1, 0, 0, 0, 0])
    assert board.render_text(s) == "O\nX|2|O\n4|X|6\n7|8|9\n"
    assert board.max_render_pieces == short.max_render_pieces
    assert len(text_pieces) == len(short.text_pieces()) - 1  # no footer piece


@pytest.mark.parametrize("bad, field", [
    (dict(agent_player="X"), "agent_player"), (dict(opponent="alphazero"), "opponent"),
    (dict(noise=1.5), "noise"), (dict(noise=-0.1), "noise"),
    (dict(mcts_simulations=0), "mcts_simulations"), (dict(illegal="skip"), "illegal"),
    (dict(prompt="tiny"), "prompt"),
    (dict(depth=3), "depth")])
def test_bad_options_raise(bad, field):
    with pytest.raises(ValueError, match=field):
        envs.make("tictactoe", **bad)


def test_illegal_move_and_reward_range():
    env = envs.make("tictactoe", opponent="minimax")
    step = jit(env.step)
    s = step(env.init(jax.random.key(0)), 4, jax.random.key(1))
    s2 = step(s, 4, jax.random.key(2))  # occupied: penalty, episode ends
    assert bool(s2.done) and float(s2.reward) == -1.0 and env.reward_range == (-1.0, 1.0)
    assert envs.make("tictactoe", illegal="random").reward_range == (-2.0, 1.0)
