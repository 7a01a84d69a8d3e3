"""Jittable UCT (Kocsis & Szepesvari 2006, "Bandit based Monte-Carlo
Planning") for tic-tac-toe, with uniformly random rollouts.

Fixed shapes: a tree of `num_simulations + 1` nodes, each simulation adds at
most one node; every loop is a `lax.fori_loop` with a static trip count
(depth <= 9), so it vmaps. One simulation:

  1. select: from the root, while the node is non-terminal and all its legal
     children exist, go to the child maximising
         W_c / N_c + c_uct * sqrt(ln N_parent / N_c),   c_uct = sqrt(2);
  2. expand: add one uniformly random untried child (unless terminal);
  3. rollout: uniformly random moves to the end of the game;
  4. backup: N += 1 along the path, W += the outcome (+1 / 0 / -1) seen by
     the player who moved into each node.

The move played is the most visited root child (lowest cell on ties).
Random draws are `key_bits(key, counter)` hashes, 10 per simulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lm.envs._tictactoe_tables import NUM_CELLS, ONGOING, POW3, empty_bits, pick_cell, status_of
from jaxrl_lm.envs.bits import key_bits

C_UCT = 2.0**0.5


def _board_of(code: jax.Array) -> jax.Array:
    return ((code // jnp.asarray(POW3)) % 3).astype(jnp.int8)


def _mark_at(depth: jax.Array, root_mark: int) -> jax.Array:
    """Mark of the player to move at a tree depth (root = depth 0)."""
    return jnp.where(depth % 2 == 0, root_mark, 3 - root_mark)


def _place_any(board, code, cell, mark):
    """`place` with a traced mark (1 or 2)."""
    board = jnp.where(jnp.arange(NUM_CELLS) == cell, mark.astype(jnp.int8), board)
    return board, code + mark * jnp.asarray(POW3)[cell]


def _select(tree, root_mark: int):
    """Descend while fully expanded: (leaf node, depth, path i32[10])."""
    codes, children, visits, values = tree

    def body(_, carry):
        node, depth, path, going = carry
        board = _board_of(codes[node])
        legal = board == 0
        kids = children[node]
        full = jnp.all((kids >= 0) | ~legal)
        going = going & (status_of(codes[node]) == ONGOING) & full
        n_c = visits[jnp.maximum(kids, 0)]
        ucb = values[jnp.maximum(kids, 0)] / jnp.maximum(n_c, 1.0) + C_UCT * jnp.sqrt(
            jnp.log(jnp.maximum(visits[node], 1.0)) / jnp.maximum(n_c, 1.0))
        child = kids[jnp.argmax(jnp.where(legal, ucb, -jnp.inf))]
        node = jnp.where(going, child, node)
        depth = depth + going
        path = jnp.where(going, path.at[depth].set(child), path)
        return node, depth, path, going

    init = (jnp.int32(0), jnp.int32(0), jnp.zeros((NUM_CELLS + 1,), jnp.int32), jnp.bool_(True))
    node, depth, path, _ = jax.lax.fori_loop(0, NUM_CELLS, body, init)
    return node, depth, path


def _rollout(code: jax.Array, mark: jax.Array, bits_9: jax.Array) -> jax.Array:
    """Random play from `code` with `mark` to move: the final status."""
    def body(i, carry):
        board, code, mark = carry
        live = status_of(code) == ONGOING
        cell = pick_cell(empty_bits(board), bits_9[i])
        new_board, new_code = _place_any(board, code, cell, mark)
        return (jnp.where(live, new_board, board), jnp.where(live, new_code, code),
                jnp.where(live, 3 - mark, mark))

    _, code, _ = jax.lax.fori_loop(0, NUM_CELLS, body, (_board_of(code), code, mark))
    return status_of(code)


def _simulate(s, tree, n_nodes, root_mark: int, key):
    codes, children, visits, values = tree
    bits = key_bits(key, s * (NUM_CELLS + 1) + jnp.arange(NUM_CELLS + 1))
    leaf, depth, path = _select(tree, root_mark)
    # expand one untried legal child
    board = _board_of(codes[leaf])
    untried = (board == 0) & (children[leaf] < 0)
    expand = (status_of(codes[leaf]) == ONGOING) & jnp.any(untried)
    cell = pick_cell(empty_bits(jnp.where(untried, 0, 1)), bits[0])
    mark = _mark_at(depth, root_mark)
    _, child_code = _place_any(board, codes[leaf], cell, mark)
    new = jnp.where(expand, n_nodes, leaf)
    children = children.at[leaf, cell].set(jnp.where(expand, n_nodes, children[leaf, cell]))
    codes = codes.at[new].set(jnp.where(expand, child_code, codes[new]))
    depth = depth + expand
    path = path.at[depth].set(new)
    outcome = _rollout(codes[new], _mark_at(depth, root_mark), bits[1:])
    # backup: node at depth d was entered by the player to move at depth d - 1
    d = jnp.arange(NUM_CELLS + 1)
    on_path = d <= depth
    mover = _mark_at(d - 1, root_mark)
    reward = jnp.where(outcome == mover, 1.0, jnp.where((outcome == 3 - mover), -1.0, 0.0))
    reward = jnp.where(outcome >= 3, 0.0, reward)
    visits = visits.at[path].add(on_path.astype(jnp.float32))
    values = values.at[path].add(jnp.where(on_path, reward, 0.0))
    return (codes, children, visits, values), n_nodes + expand


def mcts_move(code: jax.Array, root_mark: int, key: jax.Array, num_simulations: int) -> jax.Array:
    """i32[]: the UCT move for `root_mark` (1 = X, 2 = O) to play at `code`."""
    m = num_simulations + 1
    tree = (jnp.zeros((m,), jnp.int32).at[0].set(code), jnp.full((m, NUM_CELLS), -1, jnp.int32),
            jnp.zeros((m,), jnp.float32), jnp.zeros((m,), jnp.float32))
    tree, _ = jax.lax.fori_loop(
        0, num_simulations,
        lambda s, c: _simulate(s, c[0], c[1], root_mark, key), (tree, jnp.int32(1)))
    _, children, visits, _ = tree
    kids = children[0]
    legal = _board_of(code) == 0
    n_root = jnp.where(legal & (kids >= 0), visits[jnp.maximum(kids, 0)], -1.0)
    n_root = jnp.where(legal, n_root, -2.0)
    return jnp.argmax(n_root).astype(jnp.int32)
