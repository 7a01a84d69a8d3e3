"""Tic-tac-toe tables built once on the host with numpy, plus the jnp
helpers that read them inside jit.

Every board is a base-3 code over the 9 cells (row-major, 0..8):

    code = sum_i board[i] * 3**i,   board[i] in {0 empty, 1 X, 2 O},

so one int32 indexes every per-position table (3**9 = 19683 entries, a few
tens of KB, cheap to gather from under vmap). The tables cover all codes,
reachable or not; only the reachable 5478 are ever looked up.

The env's state keeps the board as two 9-bit cell sets instead (X's and
O's, bit i = cell i): placing a mark is one OR, a win one lookup in a 512-entry
table (`WIN`), a full board one compare; the base-3 code is two lookups
(`code_of_bits`), read only by the minimax and MCTS opponents.

Minimax is solved by retrograde analysis over the whole game tree, one layer
of filled-cell count at a time from full boards down to the empty board, with
a depth-aware negamax score for the player to move (Knuth & Moore 1975 for
negamax; the depth term is the usual "win fast, lose slow" refinement):

    terminal, won by the previous mover, e empty cells:  -(1 + e)
    terminal draw:                                        0
    otherwise:   max over empty cells i of  -score(child_i)

so the sign of `SCORE` is the game value (+1 win / 0 draw / -1 loss) and
`OPT_BITS` holds every move reaching the maximum (ties are broken uniformly
at random by `pick_cell`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_CELLS = 9
NUM_CODES = 3**NUM_CELLS
POW3 = (3 ** np.arange(NUM_CELLS)).astype(np.int32)
LINES = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8],
                  [0, 4, 8], [2, 4, 6]])
ONGOING, X_WON, O_WON, DRAW = 0, 1, 2, 3


def decode_all() -> np.ndarray:
    """i8[NUM_CODES, 9]: the board of every code."""
    return ((np.arange(NUM_CODES)[:, None] // POW3) % 3).astype(np.int8)


def _status(boards: np.ndarray) -> np.ndarray:
    lines = boards[:, LINES]
    x_won = (lines == 1).all(-1).any(-1)
    o_won = (lines == 2).all(-1).any(-1)
    full = (boards != 0).all(-1)
    return np.select([x_won, o_won, full], [X_WON, O_WON, DRAW], ONGOING).astype(np.int8)


def _solve(boards: np.ndarray, status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Retrograde negamax: (score i8[NUM_CODES], opt_bits i16[NUM_CODES])."""
    filled = (boards != 0).sum(1)
    nx, no = (boards == 1).sum(1), (boards == 2).sum(1)
    mover = np.where(nx > no, 2, 1).astype(np.int32)
    score = np.zeros(NUM_CODES, np.int8)
    won = (status == X_WON) | (status == O_WON)
    score[won] = -(1 + NUM_CELLS - filled[won])
    opt = np.zeros(NUM_CODES, np.int16)
    bit = 1 << np.arange(NUM_CELLS)
    for k in range(NUM_CELLS - 1, -1, -1):
        idx = np.nonzero((filled == k) & (status == ONGOING))[0]
        empty = boards[idx] == 0
        child = idx[:, None] + mover[idx, None] * POW3[None, :]
        child_score = np.where(empty, -score[np.where(empty, child, 0)].astype(np.int32), -100)
        best = child_score.max(1)
        score[idx] = best
        opt[idx] = ((child_score == best[:, None]) * bit).sum(1)
    return score, opt


def _rank_tables() -> tuple[np.ndarray, np.ndarray]:
    """popcount i32[512] and nth_bit i32[512 * 9]: nth_bit[m * 9 + r] is the
    r-th set bit of the 9-bit mask m (0 where r >= popcount(m))."""
    popcount = np.zeros(512, np.int32)
    nth = np.zeros((512, NUM_CELLS), np.int32)
    for m in range(512):
        cells = [i for i in range(NUM_CELLS) if m >> i & 1]
        popcount[m] = len(cells)
        nth[m, :len(cells)] = cells
    return popcount, nth.reshape(-1)


def _bit_tables() -> tuple[np.ndarray, np.ndarray]:
    """win bool[512]: the 9-bit cell set m holds a whole line; pow3 i32[512]:
    sum of 3**i over the set bits i of m (so a board's code is
    pow3[x_bits] + 2 * pow3[o_bits])."""
    masks = np.arange(512)
    has = (masks[:, None] >> np.arange(NUM_CELLS)) & 1
    win = has[:, LINES].all(-1).any(-1)
    return win, (has * POW3).sum(1).astype(np.int32)


BOARDS = decode_all()
STATUS = _status(BOARDS)  # i8[NUM_CODES]: ONGOING | X_WON | O_WON | DRAW
SCORE, OPT_BITS = _solve(BOARDS, STATUS)
POPCOUNT, NTH_BIT = _rank_tables()
WIN, POW3_OF_BITS = _bit_tables()
FULL = (1 << NUM_CELLS) - 1  # every cell taken


# --- jnp helpers (jittable, vmappable; numpy tables become constants) ------
def cell_bit(cell: jax.Array) -> jax.Array:
    """i32[]: the 9-bit mask of one cell."""
    return jnp.left_shift(jnp.int32(1), jnp.asarray(cell, jnp.int32))


def free_bits(x_bits: jax.Array, o_bits: jax.Array) -> jax.Array:
    """i32[]: the 9-bit set of the cells neither X nor O holds."""
    return FULL & ~(x_bits | o_bits)


def has_line(bits: jax.Array) -> jax.Array:
    """bool[]: the cell set `bits` (one player's marks) holds a whole line."""
    return jnp.asarray(WIN)[bits]


def code_of_bits(x_bits: jax.Array, o_bits: jax.Array) -> jax.Array:
    """i32[]: the base-3 code of the board with X on `x_bits`, O on `o_bits`."""
    pow3 = jnp.asarray(POW3_OF_BITS)
    return pow3[x_bits] + 2 * pow3[o_bits]


def board_of_bits(x_bits: jax.Array, o_bits: jax.Array) -> jax.Array:
    """i8[..., 9]: cells (0 empty, 1 X, 2 O) of (batches of) bit boards."""
    shift = jnp.arange(NUM_CELLS, dtype=jnp.int32)
    x = (jnp.asarray(x_bits, jnp.int32)[..., None] >> shift) & 1
    o = (jnp.asarray(o_bits, jnp.int32)[..., None] >> shift) & 1
    return (x + 2 * o).astype(jnp.int8)


def free_mask(taken_bits: jax.Array) -> jax.Array:
    """bool[9]: the cells not in the 9-bit set `taken_bits`."""
    return (jnp.right_shift(taken_bits, jnp.arange(NUM_CELLS, dtype=jnp.int32)) & 1) == 0


def status_of(code: jax.Array) -> jax.Array:
    """i8[]: ONGOING | X_WON | O_WON | DRAW of a code."""
    return jnp.asarray(STATUS)[code]


def bits_of_cells(cells_9: jax.Array) -> jax.Array:
    """i32[...]: the 9-bit set of the cells where the bool[..., 9] `cells_9` holds."""
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(NUM_CELLS, dtype=jnp.int32))
    return jnp.sum(jnp.where(cells_9, bits, 0), axis=-1)


def empty_bits(board_9: jax.Array) -> jax.Array:
    """i32[]: 9-bit mask of the empty cells."""
    return bits_of_cells(board_9 == 0)


def opt_bits(code: jax.Array) -> jax.Array:
    """i32[]: 9-bit mask of the minimax-optimal moves (0 on terminal codes)."""
    return jnp.asarray(OPT_BITS)[code].astype(jnp.int32)


def pick_cell(mask: jax.Array, bits: jax.Array) -> jax.Array:
    """i32[]: a uniformly random set bit of the 9-bit `mask`, from one uint32
    of random `bits` (bits % count: bias < 9 / 2**32). 0 when mask is 0."""
    count = jnp.asarray(POPCOUNT)[mask]
    rank = (bits % jnp.maximum(count, 1).astype(jnp.uint32)).astype(jnp.int32)
    return jnp.asarray(NTH_BIT)[mask * NUM_CELLS + rank]
