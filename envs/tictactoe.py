"""Tic-tac-toe against a built-in opponent (single-agent from the learner's
side; the opponent moves inside `init` / `step`).

Cells are numbered row-major 0..8 as actions and written "1".."9" in text.
The agent plays `agent_player` ("x" moves first; with "o" the opponent's
first move happens inside `init`). After a legal agent move the opponent
replies unless the game is over. Opponents:
  random   a uniformly random empty cell;
  minimax  perfect play read from a table solved once over the whole game
           tree (envs/_tictactoe_tables.py, depth-aware negamax: wins fast,
           loses slow), ties between optimal moves broken uniformly at random;
  mcts     UCT with random rollouts, `mcts_simulations` per move
           (envs/_tictactoe_mcts.py);
  noisy    minimax, but a uniformly random empty cell with probability `noise`.

Reward (agent's side), on the step that ends the game: +1 win, 0 draw,
-1 loss; 0 on every other step. Illegal moves follow envs.core's rule.

The step is branch-free and works on bit boards: the state keeps X's and
O's cells as two 9-bit sets, so a move is one OR, a win one lookup in a
512-entry table, the legal mask one shift; the base-3 code (the minimax
table's index) is derived only for the minimax, noisy and mcts opponents.
An opponent move is one uint32 hashed from the key (see `envs.bits.key_bits`)
turned into a rank among the allowed cells. `board`, `code` and `winner` are
computed from the bits on demand (render, scripted players, tests).

Prompt (about 130 characters):
    Tic-tac-toe: get 3 in a row. You are X. Cells 1-9, row by row.
    X|.|O
    .|X|.
    .|.|.
    Legal: 2 4 6 7 8 9
    Answer with ACTION=<cell>.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_lm.envs import _tictactoe_tables as tables
from jaxrl_lm.envs._tictactoe_mcts import mcts_move
from jaxrl_lm.envs.bits import key_bits, uniform_from_bits
from jaxrl_lm.envs.core import Env, State, base_fields, check_choice, check_range, register

OPPONENTS = ("random", "minimax", "mcts", "noisy")
PROMPTS = ("full", "short", "board")
SYMBOLS = ".XO"  # by board value


@struct.dataclass
class TicTacToeState(State):
    x: jax.Array  # i32[] 9-bit set of X's cells (bit i = cell i, row-major)
    o: jax.Array  # i32[] 9-bit set of O's cells

    @property
    def board(self) -> jax.Array:
        """i8[..., 9] row-major cells: 0 empty, 1 X, 2 O."""
        return tables.board_of_bits(self.x, self.o)

    @property
    def code(self) -> jax.Array:
        """i32[...] base-3 board code sum board[i] * 3**i (the tables' index)."""
        return tables.code_of_bits(self.x, self.o)

    @property
    def winner(self) -> jax.Array:
        """i8[...]: 0 none (ongoing or draw), 1 X, 2 O."""
        return (tables.has_line(self.x) + 2 * tables.has_line(self.o)).astype(jnp.int8)

    def with_board(self, board_9) -> "TicTacToeState":
        """This state with its cells (and legal mask) set from a 0/1/2 board."""
        board_9 = jnp.asarray(board_9, jnp.int32)
        return self.replace(x=tables.bits_of_cells(board_9 == 1),
                            o=tables.bits_of_cells(board_9 == 2), legal_action_mask=board_9 == 0)


@register
@dataclasses.dataclass(frozen=True)
class TicTacToe(Env):
    """Tic-tac-toe vs a scripted opponent; see the module docstring."""

    agent_player: str = "x"  # the agent's mark: "x" (moves first) | "o"
    opponent: str = "random"  # "random" | "minimax" | "mcts" | "noisy"
    noise: float = 0.2  # noisy opponent: rate of uniformly random moves, [0, 1]
    mcts_simulations: int = 100  # mcts opponent: simulations per move, 1..10000
    prompt: str = "full"  # "full": rules, board, legal-move list | "short": the board with
    #                      free cells numbered ("1|O|X"), 35 characters instead of ~150 |
    #                      "board": the agent's mark on a line, then that board: 20 characters

    name: ClassVar[str] = "tictactoe"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "agent_player", ("x", "o"))
        check_choice(self, "opponent", OPPONENTS)
        check_range(self, "noise", 0.0, 1.0)
        check_range(self, "mcts_simulations", 1, 10000)
        check_choice(self, "prompt", PROMPTS)

    @property
    def me(self) -> int:
        """The agent's board mark (1 = X, 2 = O)."""
        return 1 if self.agent_player == "x" else 2

    @property
    def num_actions(self) -> int:
        return tables.NUM_CELLS

    @property
    def max_steps(self) -> int:
        return 5 if self.agent_player == "x" else 4

    @property
    def reward_range(self) -> tuple[float, float]:
        p = self.illegal_penalty
        if self.illegal == "random":
            return min(-1.0, p - 1.0), max(1.0, p + 1.0)
        return min(-1.0, p), max(1.0, p)

    def opponent_move(self, mine: jax.Array, theirs: jax.Array, key: jax.Array) -> jax.Array:
        """i32[]: the opponent's cell, given the agent's cells `mine` and the
        opponent's `theirs` (9-bit sets); legal whenever the game is not over."""
        x, o = (mine, theirs) if self.me == 1 else (theirs, mine)
        if self.opponent == "mcts":
            return mcts_move(tables.code_of_bits(x, o), 3 - self.me, key, self.mcts_simulations)
        bits = key_bits(key, 0)
        empty = tables.free_bits(x, o)
        if self.opponent == "random":
            return tables.pick_cell(empty, bits)
        best = tables.opt_bits(tables.code_of_bits(x, o))
        if self.opponent == "minimax":
            return tables.pick_cell(best, bits)
        explore = uniform_from_bits(key_bits(key, 1)) < self.noise
        return tables.pick_cell(jnp.where(explore, empty, best), bits)

    def _init(self, key: jax.Array) -> TicTacToeState:
        x = jnp.int32(0)
        if self.agent_player == "o":
            x = tables.cell_bit(self.opponent_move(jnp.int32(0), jnp.int32(0), key))
        base = base_fields(9)
        base["legal_action_mask"] = tables.free_mask(x)
        return TicTacToeState(**base, x=x, o=jnp.int32(0))

    def _step(self, state: TicTacToeState, action: jax.Array, key: jax.Array) -> TicTacToeState:
        mine, theirs = (state.x, state.o) if self.me == 1 else (state.o, state.x)
        mine = mine | tables.cell_bit(action)
        won = tables.has_line(mine)
        over = won | ((mine | theirs) == tables.FULL)
        reply = tables.cell_bit(self.opponent_move(mine, theirs, key))
        theirs = jnp.where(over, theirs, theirs | reply)
        lost = tables.has_line(theirs)
        taken = mine | theirs
        x, o = (mine, theirs) if self.me == 1 else (theirs, mine)
        return state.replace(
            x=x, o=o, reward=won.astype(jnp.float32) - lost.astype(jnp.float32),
            done=over | lost | (taken == tables.FULL), legal_action_mask=tables.free_mask(taken))

    # --- text -------------------------------------------------------------
    def _header(self) -> str:
        if self.prompt == "board":
            return f"{self.agent_player.upper()}\n"
        if self.prompt == "short":
            return f"You are {self.agent_player.upper()}.\n"
        return (f"Tic-tac-toe: get 3 in a row. You are {self.agent_player.upper()}. "
                "Cells 1-9, row by row.\n")

    def _footer(self) -> str:
        """The prompt's last line ("board" has none: its slot renders empty)."""
        return {"short": "Move?\n", "board": ""}.get(self.prompt, "Answer with ACTION=<cell>.\n")

    def action_strings(self) -> tuple[str, ...]:
        return tuple(str(i + 1) for i in range(9))

    def text_pieces(self) -> tuple[str, ...]:
        if self.prompt != "full":
            # 0 header, 1 "X", 2 "O", 3 "|", 4 "\n", 5-13 free cells "1".."9", 14 footer
            # ("board": no footer, so no piece 14)
            pieces = (self._header(), "X", "O", "|", "\n", *(str(i + 1) for i in range(9)))
            return pieces + ((self._footer(),) if self._footer() else ())
        # 0 header, 1-3 cell symbols by board value, 4 "|", 5 "\n", 6 "Legal:",
        # 7-15 " 1".." 9", 16 answer format
        return (self._header(), *SYMBOLS, "|", "\n", "Legal:",
                *(f" {i + 1}" for i in range(9)), self._footer())

    @property
    def max_render_pieces(self) -> int:
        return 1 + 18 + 1 + (0 if self.prompt != "full" else 9 + 2)

    def render_pieces(self, state: TicTacToeState) -> jax.Array:
        board = state.board.astype(jnp.int32)
        if self.prompt != "full":
            cells = jnp.where(board == 0, 5 + jnp.arange(9, dtype=jnp.int32), board)
            sep_33 = jnp.broadcast_to(jnp.asarray([3, 3, 4], jnp.int32), (3, 3))
            rows = jnp.stack([cells.reshape(3, 3), sep_33], axis=-1).reshape(-1)
            footer = 14 if self.prompt == "short" else -1
            return jnp.concatenate([jnp.asarray([0], jnp.int32), rows,
                                    jnp.asarray([footer], jnp.int32)])
        cells_33 = (1 + board).reshape(3, 3)
        sep_33 = jnp.broadcast_to(jnp.asarray([4, 4, 5], jnp.int32), (3, 3))
        rows = jnp.stack([cells_33, sep_33], axis=-1).reshape(-1)
        legal = jnp.where(state.legal_action_mask, 7 + jnp.arange(9, dtype=jnp.int32), -1)
        return jnp.concatenate([jnp.asarray([0], jnp.int32), rows, jnp.asarray([6], jnp.int32),
                                legal, jnp.asarray([5, 16], jnp.int32)])

    def render_text(self, state: TicTacToeState) -> str:
        # From the bits in Python: `state.board` is a jnp op, which on a host
        # state would dispatch to the accelerator once per render.
        x, o = (int(v) for v in jax.device_get((state.x, state.o)))
        board = [(x >> i & 1) + 2 * (o >> i & 1) for i in range(9)]
        if self.prompt != "full":
            cell = [str(i + 1) if v == 0 else SYMBOLS[v] for i, v in enumerate(board)]
            rows = "".join(f"{cell[3 * r]}|{cell[3 * r + 1]}|{cell[3 * r + 2]}\n" for r in range(3))
            return f"{self._header()}{rows}{self._footer()}"
        mask = [bool(v) for v in jax.device_get(state.legal_action_mask)]
        rows = "".join(
            f"{SYMBOLS[board[3 * r]]}|{SYMBOLS[board[3 * r + 1]]}|{SYMBOLS[board[3 * r + 2]]}\n"
            for r in range(3))
        legal = "".join(f" {i + 1}" for i in range(9) if mask[i])
        return f"{self._header()}{rows}Legal:{legal}\n{self._footer()}"


# --- scripted players (from the agent's side) ------------------------------
def minimax(env: TicTacToe, state: TicTacToeState, key: jax.Array) -> jax.Array:
    """Perfect play: a uniformly random move among the minimax-optimal ones
    (any empty cell once the game is over, so the pick stays legal)."""
    del env
    opt = tables.opt_bits(state.code)
    mask = jnp.where(opt == 0, tables.free_bits(state.x, state.o), opt)
    return tables.pick_cell(mask, jax.random.bits(key, (), jnp.uint32))


def mcts(env: TicTacToe, state: TicTacToeState, key: jax.Array) -> jax.Array:
    """UCT with `env.mcts_simulations` simulations for the agent's mark."""
    return mcts_move(state.code, env.me, key, env.mcts_simulations)


def random(env: TicTacToe, state: TicTacToeState, key: jax.Array) -> jax.Array:
    """A uniformly random empty cell."""
    del env
    free = tables.free_bits(state.x, state.o)
    return tables.pick_cell(free, jax.random.bits(key, (), jnp.uint32))


BASELINES = {"minimax": minimax, "random": random, "mcts": mcts}
