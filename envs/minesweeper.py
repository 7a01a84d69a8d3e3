"""Minesweeper on a square board, with a safe first reveal and jitted flood fill.

Actions are cells, index = row * size + col, written as column letter + row
number ("C3" = column C, row 3). Mines are placed at the first reveal, uniformly
among the cells outside the 3x3 neighbourhood of the clicked cell, so the first
reveal is always a 0 and opens a region (this is why `mines <= size**2 - 9`).

Revealing a cell with no adjacent mine reveals its whole 8-connected region of
zero cells plus their neighbours (the classic flood fill), computed on packed
row bitmasks with a `lax.while_loop` until the region stops growing.

Rewards: -1 for revealing a mine (episode ends), +1 when every safe cell is
revealed (episode ends), 0 otherwise. Legal actions: unrevealed cells. Every
non-losing step reveals at least one new safe cell, so an episode lasts at most
`size**2 - mines` steps.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs.core import Env, State, base_fields, check_range, register

_COLS = "ABCDEFGH"


@struct.dataclass
class MinesweeperState(State):
    mine: jax.Array  # bool[N] mine layout; all False until the first reveal
    count: jax.Array  # i32[N] number of mines among the 8 neighbours of each cell
    revealed: jax.Array  # bool[N] cells the agent has uncovered
    placed: jax.Array  # bool[] mines have been placed (first reveal done)
    won: jax.Array  # bool[] every safe cell revealed


def _neighbours(n: int, self_loop: bool) -> np.ndarray:
    """bool[N, N]: cells i, j are king-move neighbours (and i == j if self_loop)."""
    r, c = np.divmod(np.arange(n * n), n)
    near = (np.abs(r[:, None] - r[None]) <= 1) & (np.abs(c[:, None] - c[None]) <= 1)
    return near if self_loop else near & ~np.eye(n * n, dtype=bool)


@register
@dataclasses.dataclass(frozen=True)
class Minesweeper(Env):
    size: int = 5  # board side, 4..8
    mines: int = 4  # number of mines, 1..size**2 - 9

    name: ClassVar[str] = "minesweeper"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "size", 4, 8)
        check_range(self, "mines", 1, self.size**2 - 9)

    @property
    def num_actions(self) -> int:
        return self.size * self.size

    @property
    def max_steps(self) -> int:
        return self.size * self.size - self.mines

    @property
    def reward_range(self) -> tuple[float, float]:
        return pu.reward_range(self, -1.0, 1.0)

    # --- dynamics -----------------------------------------------------------
    def _init(self, key: jax.Array) -> MinesweeperState:
        n2 = self.num_actions
        return MinesweeperState(
            **base_fields(n2),
            mine=jnp.zeros((n2,), jnp.bool_),
            count=jnp.zeros((n2,), jnp.int32),
            revealed=jnp.zeros((n2,), jnp.bool_),
            placed=jnp.zeros((), jnp.bool_),
            won=jnp.zeros((), jnp.bool_),
        )

    def _place(self, action: jax.Array, key: jax.Array) -> jax.Array:
        """bool[N]: `mines` cells drawn uniformly outside the 3x3 zone of `action`."""
        n2 = self.num_actions
        zone = jnp.asarray(_neighbours(self.size, True))[action]
        # Unique scores (random high bits, cell index in the low 6 bits); the zone
        # gets the top bit so it always ranks last. Mines = the `mines` lowest.
        bits = jax.random.bits(key, (n2,), jnp.uint32)
        idx = jnp.arange(n2, dtype=jnp.uint32)
        score = ((bits >> 7) << 6) | idx | (zone.astype(jnp.uint32) << 31)
        rank = jnp.sum(score[None, :] < score[:, None], axis=1)
        return rank < self.mines

    def _rows(self, cells: jax.Array) -> jax.Array:
        """bool[N] -> u32[size] row bitmasks (bit c = column c)."""
        w = jnp.left_shift(jnp.uint32(1), jnp.arange(self.size, dtype=jnp.uint32))
        return jnp.sum(cells.reshape(self.size, self.size) * w, axis=1, dtype=jnp.uint32)

    def _cells(self, rows: jax.Array) -> jax.Array:
        """u32[size] row bitmasks -> bool[N]."""
        shifts = jnp.arange(self.size, dtype=jnp.uint32)
        return ((rows[:, None] >> shifts) & 1).astype(jnp.bool_).reshape(-1)

    def _dilate(self, rows: jax.Array) -> jax.Array:
        """3x3 dilation of a u32[size] row-bitmask board."""
        full = jnp.uint32((1 << self.size) - 1)
        h = (rows | (rows << 1) | (rows >> 1)) & full
        z = jnp.zeros((1,), jnp.uint32)
        return h | jnp.concatenate([h[1:], z]) | jnp.concatenate([z, h[:-1]])

    def flood(self, mine: jax.Array, count: jax.Array, action: jax.Array) -> jax.Array:
        """bool[N]: cells uncovered by revealing `action` (flood fill over zeros)."""
        onehot = jnp.arange(self.num_actions) == action
        zero = self._rows(~mine & (count == 0))
        region = self._rows(onehot) & zero

        def body(carry):
            reg, _ = carry
            new = (self._dilate(reg) & zero) | reg
            return new, jnp.any(new != reg)

        region, _ = jax.lax.while_loop(lambda c: c[1], body, (region, jnp.bool_(True)))
        return onehot | self._cells(self._dilate(region))

    def _step(self, state: MinesweeperState, action: jax.Array, key: jax.Array):
        adj = jnp.asarray(_neighbours(self.size, False), jnp.float32)
        fresh = self._place(action, key)
        mine = jnp.where(state.placed, state.mine, fresh)
        count = jnp.where(state.placed, state.count, (fresh.astype(jnp.float32) @ adj).astype(jnp.int32))
        revealed = state.revealed | self.flood(mine, count, action)
        hit = mine[action]
        won = ~hit & (jnp.sum(revealed) == self.num_actions - self.mines)
        reward = jnp.where(hit, -1.0, jnp.where(won, 1.0, 0.0)).astype(jnp.float32)
        return state.replace(
            reward=reward, done=hit | won, legal_action_mask=~revealed,
            mine=mine, count=count, revealed=revealed,
            placed=jnp.ones((), jnp.bool_), won=won,
        )

    # --- text hooks -----------------------------------------------------------
    def action_strings(self) -> tuple[str, ...]:
        n = self.size
        return tuple(f"{_COLS[i % n]}{i // n + 1}" for i in range(n * n))

    def _header(self) -> str:
        n = self.size
        return (f"Minesweeper {n}x{n}, {self.mines} mines. Reveal all safe cells. "
                f"#=hidden .=0\n  {_COLS[:n]}\n")

    _FOOTER: ClassVar[str] = "Answer with ACTION=<column><row>, e.g. ACTION=A1.\n"

    def text_pieces(self) -> tuple[str, ...]:
        # 0 header, 1 footer, 2 "\n", 3 "#", 4 ".", 5 "*", 6.. "1".."8", then row labels.
        labels = tuple(f"{r + 1} " for r in range(self.size))
        return (self._header(), self._FOOTER, "\n", "#", ".", "*",
                *[str(d) for d in range(1, 9)]) + labels

    @property
    def max_render_pieces(self) -> int:
        return 2 + self.size * (self.size + 2)

    def render_pieces(self, state: MinesweeperState) -> jax.Array:
        n = self.size
        sym = jnp.where(state.mine, 5, jnp.where(state.count == 0, 4, 5 + state.count))
        sym = jnp.where(state.revealed, sym, 3).reshape(n, n)
        label = (14 + jnp.arange(n))[:, None]
        newline = jnp.full((n, 1), 2)
        rows = jnp.concatenate([label, sym, newline], axis=1).reshape(-1)
        return jnp.concatenate([jnp.array([0]), rows, jnp.array([1])]).astype(jnp.int32)

    def render_text(self, state: MinesweeperState) -> str:
        n = self.size
        mine, count, rev = (np.asarray(x).reshape(n, n)
                            for x in (state.mine, state.count, state.revealed))
        lines = []
        for r in range(n):
            cells = ["#" if not rev[r, c] else "*" if mine[r, c]
                     else "." if count[r, c] == 0 else str(count[r, c]) for c in range(n)]
            lines.append(f"{r + 1} {''.join(cells)}\n")
        return self._header() + "".join(lines) + self._FOOTER


# --- baselines ----------------------------------------------------------------
def _logic(env: Minesweeper, state: MinesweeperState, key: jax.Array) -> jax.Array:
    """Reveal a cell the visible numbers prove safe; else the least risky cell.

    One deduction pass: a number whose hidden neighbours all must be mines marks
    them as mines; a number already satisfied by known mines proves its other
    hidden neighbours safe. Without a proof, risk = the worst local ratio
    (remaining mines / unknown neighbours) over adjacent numbers, or the global
    density of the unknown cells away from numbers; ties are broken at random.
    Reads `count` only at revealed cells.
    """
    adj = jnp.asarray(_neighbours(env.size, False), jnp.float32)
    hidden = ~state.revealed
    number = state.revealed & ~state.mine
    cnt = jnp.where(number, state.count, 0).astype(jnp.float32)
    n_hidden = hidden.astype(jnp.float32) @ adj
    full = number & (cnt == n_hidden) & (cnt > 0)
    known_mine = hidden & ((full.astype(jnp.float32) @ adj) > 0)
    n_known = known_mine.astype(jnp.float32) @ adj
    satisfied = number & (cnt == n_known)
    unknown = hidden & ~known_mine
    safe = unknown & ((satisfied.astype(jnp.float32) @ adj) > 0)
    local = (cnt - n_known) / jnp.maximum(n_hidden - n_known, 1.0)  # per number cell
    near = (adj > 0) & number[None, :]  # [cell, number neighbour]
    local_risk = jnp.max(jnp.where(near, local[None, :], -1.0), axis=1)
    density = (env.mines - jnp.sum(known_mine)) / jnp.maximum(jnp.sum(unknown), 1)
    risk = jnp.where(local_risk >= 0, local_risk, density)
    risk = jnp.where(safe, -1.0, risk)
    pick = jnp.where(jnp.any(unknown), unknown, hidden)
    return pu.argmax_random_tie(key, jnp.where(pick, -risk, -jnp.inf))


def _random(env: Minesweeper, state: MinesweeperState, key: jax.Array) -> jax.Array:
    return pu.random_legal(key, state.legal_action_mask)


BASELINES = {"logic": _logic, "random": _random}
