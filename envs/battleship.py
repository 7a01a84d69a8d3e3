"""Battleship (single player): sink hidden ships on a small grid with few shots.

Board `size` x `size` (6 by default), ships of lengths `ships` (3, 2, 2 by
default), each a horizontal or vertical line. They are placed inside jit one
at a time, each uniformly among the positions that do not overlap the ships
already placed (an empty row always remains while fewer than `size` ships are
down, so placement never fails; hence at most 5 ships and size >= 5).

An action is a cell, index = row * size + col, written column letter + row
number ("B4" = column B, row 4). Legal actions: cells not shot yet. A shot
hits or misses; a ship is sunk once all its cells are hit, and the board then
shows its cells as sunk.

Rewards: `hit_reward` (0 by default) for every hit, plus 1 on the shot that
sinks the last ship (episode ends); so every reward lies in
[0, 1 + hit_reward]. Episodes are truncated after `shots` (20) shots.

Prompt:
    Battleship 6x6: ships of lengths 3,2,2 are hidden. Sink all in 20 shots. ...
      ABCDEF
    1 ..o...
    2 ..X...
    ...
    Shots left: 18. Answer with ACTION=<cell like B4>.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _guess_util as gu
from jaxrl_lm.envs.core import Env, State, base_fields, check_range, digit_pieces, register

_COLS = "ABCDEFGHI"
SYMBOLS = ".oX#"  # unknown, miss, hit, sunk


@functools.lru_cache(maxsize=None)
def placements(size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every position of a ship: (cells i32[P, length], packed u32[P, W]) where
    bit c % 32 of word c // 32 is set for each covered cell c."""
    cells = []
    for r in range(size):
        for c in range(size - length + 1):
            cells.append([r * size + c + i for i in range(length)])  # horizontal
    for r in range(size - length + 1):
        for c in range(size):
            cells.append([(r + i) * size + c for i in range(length)])  # vertical
    words = -(-size * size // 32)
    packed = np.zeros((len(cells), words), np.uint32)
    for p, line in enumerate(cells):
        for cell in line:
            packed[p, cell // 32] |= np.uint32(1 << (cell % 32))
    return np.asarray(cells, np.int32), packed


@struct.dataclass
class BattleshipState(State):
    ship: jax.Array  # i32[N] 1 + index of the ship on each cell, 0 = water; fixed in an episode
    shot: jax.Array  # bool[N] cells shot so far
    hits_left: jax.Array  # i32[S] unhit cells of each ship
    won: jax.Array  # bool[] every ship sunk


@register
@dataclasses.dataclass(frozen=True)
class Battleship(Env):
    """Battleship; see the module docstring for placement, rewards and text."""

    size: int = 6  # board side, 5..9
    ships: tuple = (3, 2, 2)  # ship lengths, 1..5 ships of length 2..size
    shots: int = 20  # shots per episode, sum(ships)..size**2
    hit_reward: float = 0.0  # reward per hit, 0..0.5

    name: ClassVar[str] = "battleship"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "size", 5, 9)
        if (not isinstance(self.ships, tuple) or not 1 <= len(self.ships) <= 5
                or not all(isinstance(s, int) and 2 <= s <= self.size for s in self.ships)):
            raise ValueError(f"Battleship.ships={self.ships!r} must be a tuple of 1..5 ship "
                             f"lengths, each an int in [2, size={self.size}]")
        check_range(self, "shots", sum(self.ships), self.size**2)
        check_range(self, "hit_reward", 0.0, 0.5)

    @property
    def num_actions(self) -> int:
        return self.size * self.size

    @property
    def max_steps(self) -> int:
        return self.shots

    @property
    def reward_range(self) -> tuple[float, float]:
        return gu.reward_range(self, 0.0, 1.0 + self.hit_reward)

    def _init(self, key: jax.Array) -> BattleshipState:
        n2 = self.num_actions
        u_s = jax.random.uniform(key, (len(self.ships),))
        occupied = jnp.zeros((-(-n2 // 32),), jnp.uint32)  # packed bits of taken cells
        ship = jnp.zeros((n2,), jnp.int32)
        for j, length in enumerate(self.ships):
            cells, packed = (jnp.asarray(x) for x in placements(self.size, length))
            free = jnp.all((packed & occupied) == 0, axis=1)
            p = gu.choose_u(free, u_s[j])
            occupied = occupied | packed[p]
            ship = ship.at[cells[p]].set(j + 1)
        return BattleshipState(
            **base_fields(n2), ship=ship, shot=jnp.zeros((n2,), jnp.bool_),
            hits_left=jnp.asarray(self.ships, jnp.int32), won=jnp.zeros((), jnp.bool_))

    def _step(self, state: BattleshipState, action: jax.Array, key: jax.Array):
        del key
        target = state.ship[action]
        hit = target > 0
        hits_left = state.hits_left.at[target - 1].add(-1, mode="drop")
        hits_left = jnp.where(hit, hits_left, state.hits_left)
        won = jnp.all(hits_left == 0)
        reward = self.hit_reward * hit + won
        return state.replace(
            reward=reward.astype(jnp.float32), done=won, won=won, hits_left=hits_left,
            shot=state.shot.at[action].set(True),
            legal_action_mask=state.legal_action_mask.at[action].set(False))

    # --- text -------------------------------------------------------------
    def view(self, state: BattleshipState) -> jax.Array:
        """i32[N] what the player knows of each cell: index into SYMBOLS."""
        sunk_n = jnp.concatenate([jnp.zeros((1,), jnp.bool_), state.hits_left == 0])[state.ship]
        known = jnp.where(state.ship > 0, jnp.where(sunk_n, 3, 2), 1)
        return jnp.where(state.shot, known, 0).astype(jnp.int32)

    def _header(self) -> str:
        n = self.size
        return (f"Battleship {n}x{n}: ships of lengths {','.join(map(str, self.ships))} are "
                f"hidden. Sink all in {self.shots} shots. .=unknown o=miss X=hit #=sunk\n"
                f"  {_COLS[:n]}\n")

    _FOOTER: ClassVar[str] = ". Answer with ACTION=<cell like B4>.\n"

    def action_strings(self) -> tuple[str, ...]:
        n = self.size
        return tuple(f"{_COLS[i % n]}{i // n + 1}" for i in range(n * n))

    def text_pieces(self) -> tuple[str, ...]:
        # 0 header, 1 "Shots left: ", 2 footer, 3 "\n", 4..7 symbols, 8.. row
        # labels "1 ".., then the digits "0".."9"
        labels = tuple(f"{r + 1} " for r in range(self.size))
        return (self._header(), "Shots left: ", self._FOOTER, "\n", *SYMBOLS, *labels,
                *"0123456789")

    @property
    def max_render_pieces(self) -> int:
        return 1 + self.size * (self.size + 2) + 1 + 2 + 1

    def render_pieces(self, state: BattleshipState) -> jax.Array:
        n = self.size
        cells = (4 + self.view(state)).reshape(n, n)
        rows = jnp.concatenate([(8 + jnp.arange(n))[:, None], cells, jnp.full((n, 1), 3)], axis=1)
        left = digit_pieces(self.shots - state.step_count, 2, 8 + n)
        return jnp.concatenate([jnp.asarray([0]), rows.reshape(-1), jnp.asarray([1]), left,
                                jnp.asarray([2])]).astype(jnp.int32)

    def render_text(self, state: BattleshipState) -> str:
        n = self.size
        ship, shot = np.asarray(state.ship), np.asarray(state.shot)
        sunk = {j + 1 for j, h in enumerate(np.asarray(state.hits_left)) if h == 0}
        out = [self._header()]
        for r in range(n):
            row = ""
            for c in range(n):
                s = ship[r * n + c]
                row += "." if not shot[r * n + c] else "o" if s == 0 else "#" if s in sunk else "X"
            out.append(f"{r + 1} {row}\n")
        out.append(f"Shots left: {self.shots - int(state.step_count)}{self._FOOTER}")
        return "".join(out)


# --- baselines -------------------------------------------------------------------
def _shift(x_rc: jax.Array, dr: int, dc: int) -> jax.Array:
    """out[r, c] = x[r + dr, c + dc], False outside the board."""
    n = x_rc.shape[0]
    pad = jnp.pad(x_rc, 2)
    return jax.lax.dynamic_slice(pad, (2 + dr, 2 + dc), (n, n))


def density(env: Battleship, state: BattleshipState) -> jax.Array:
    """f32[N]: for each cell, how many positions of the ships still afloat pass
    through it without touching a miss or a sunk ship (the classic
    probability-density heuristic)."""
    blocked = state.shot & (env.view(state) != 2)
    out = jnp.zeros((env.num_actions,), jnp.float32)
    for j, length in enumerate(env.ships):
        cells = placements(env.size, length)[0]
        cover = np.zeros((len(cells), env.num_actions), np.float32)
        np.put_along_axis(cover, cells, 1.0, axis=1)
        fits = ~jnp.any(blocked[jnp.asarray(cells)], axis=1) & (state.hits_left[j] > 0)
        out += fits.astype(jnp.float32) @ jnp.asarray(cover)
    return out


def hunt_target(env: Battleship, state: BattleshipState, key: jax.Array) -> jax.Array:
    """Target: shoot next to hits of ships not yet sunk, preferring cells that
    extend a line of two hits. Hunt (no such cell): the unshot cells of the
    checkerboard parity (every ship of length >= 2 covers one) first, among
    them those most ship positions pass through; ties broken at random."""
    n = env.size
    open_hit = (env.view(state) == 2).reshape(n, n)
    target = jnp.zeros((n, n), jnp.float32)
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        near = _shift(open_hit, dr, dc)
        target += near + 2 * (near & _shift(open_hit, 2 * dr, 2 * dc))
    parity = (jnp.arange(n)[:, None] + jnp.arange(n)[None, :]) % 2 == 0
    # density < 1000 (at most 5 ships x 2 x 81 positions), so the terms rank
    # lexicographically: target, then parity, then density.
    score = 1e6 * target.reshape(-1) + 1e3 * parity.reshape(-1) + density(env, state)
    score = jnp.where(state.shot, -1.0, score)
    return gu.choose(score == jnp.max(score), key)


def random(env: Battleship, state: BattleshipState, key: jax.Array) -> jax.Array:
    """A uniformly random unshot cell."""
    del env
    return gu.choose(state.legal_action_mask, key)


BASELINES = {"hunt_target": hunt_target, "random": random}
