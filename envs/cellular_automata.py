"""Infer a hidden elementary cellular automaton rule from examples (PAPRIKA-style).

A rule r in 0..255 maps a row x of bits (periodic boundary) to
    y[i] = bit_{4 x[i-1] + 2 x[i] + x[i+1]}(r)        (Wolfram's numbering).
The prompt shows `examples` random input rows (width `width`) with their
outputs under a hidden uniformly drawn rule. An action is a rule, written as
its 8-bit table "b7...b0" (outputs for neighbourhoods 111 110 ... 000, i.e. the
binary rule number); action index = rule number. Already guessed rules are
illegal.

Rewards: +1 and the episode ends when the guessed rule reproduces every shown
example (it may differ from the hidden rule on neighbourhoods the examples never
show); otherwise 0, and the feedback is how many of the 8 table entries agree
with the hidden rule ("right=k/8", like Mastermind's exact pegs). `turns`
guesses (6 by default).
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


def neighbourhood(x: jax.Array) -> jax.Array:
    """i32[..., W] index 4 x[i-1] + 2 x[i] + x[i+1] of each cell (periodic)."""
    x = x.astype(jnp.int32)
    return 4 * jnp.roll(x, 1, axis=-1) + 2 * x + jnp.roll(x, -1, axis=-1)


def apply_rule(rule: jax.Array, x: jax.Array) -> jax.Array:
    """One synchronous update of bool[..., W] under rule i32[] (0..255) -> bool[..., W]."""
    return ((rule >> neighbourhood(x)) & 1).astype(jnp.bool_)


@struct.dataclass
class CellularAutomataState(State):
    rule: jax.Array  # i32[] hidden rule number 0..255
    inputs: jax.Array  # bool[K, W] example input rows
    outputs: jax.Array  # bool[K, W] their images under `rule`
    guesses: jax.Array  # i32[T] rules guessed so far, -1 = none yet
    scores: jax.Array  # i32[T] table entries right (0..8) for each guess
    won: jax.Array  # bool[] a guess reproduced every example


@register
@dataclasses.dataclass(frozen=True)
class CellularAutomata(Env):
    width: int = 8  # cells per example row, 4..16
    examples: int = 3  # input/output pairs shown, 1..6
    turns: int = 6  # guesses allowed, 1..10

    name: ClassVar[str] = "cellular_automata"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "width", 4, 16)
        check_range(self, "examples", 1, 6)
        check_range(self, "turns", 1, 10)

    @property
    def num_actions(self) -> int:
        return 256

    @property
    def max_steps(self) -> int:
        return self.turns

    @property
    def reward_range(self) -> tuple[float, float]:
        return pu.reward_range(self, 0.0, 1.0)

    def _init(self, key: jax.Array) -> CellularAutomataState:
        # The rule and every input cell are fair random bits: one word for the
        # rule's 8, then one bit per cell, 2 threefry blocks in all (a randint
        # and a float per cell cost ~50, most of a step under auto-reset).
        n = self.examples * self.width
        words = jax.random.bits(key, (1 + -(-n // 32),), jnp.uint32)
        rule = (words[0] & 0xFF).astype(jnp.int32)
        cell = jnp.arange(n, dtype=jnp.uint32)
        inputs = ((words[1 + cell // 32] >> (cell % 32)) & 1).astype(jnp.bool_)
        inputs = inputs.reshape(self.examples, self.width)
        return CellularAutomataState(
            **base_fields(256), rule=rule, inputs=inputs, outputs=apply_rule(rule, inputs),
            guesses=jnp.full((self.turns,), -1, jnp.int32),
            scores=jnp.zeros((self.turns,), jnp.int32), won=jnp.zeros((), jnp.bool_),
        )

    def _step(self, state: CellularAutomataState, action: jax.Array, key: jax.Array):
        won = jnp.all(apply_rule(action, state.inputs) == state.outputs)
        right = 8 - jax.lax.population_count((action ^ state.rule) & 0xFF)
        slot = jnp.arange(self.turns) == state.step_count
        legal = state.legal_action_mask & (jnp.arange(256) != action)
        return state.replace(
            reward=won.astype(jnp.float32), done=won, legal_action_mask=legal,
            guesses=jnp.where(slot, action, state.guesses),
            scores=jnp.where(slot, right, state.scores), won=won,
        )

    # --- text hooks -----------------------------------------------------------
    def action_strings(self) -> tuple[str, ...]:
        return tuple(format(r, "08b") for r in range(256))

    _HEAD: ClassVar[str] = ("Find the hidden elementary cellular automaton rule "
                            "(rows wrap around). Examples:\n")
    _RULES: ClassVar[str] = ("A rule is 8 bits: the new cell for neighbourhoods "
                             "111 110 101 100 011 010 001 000.\nGuesses:\n")
    _FOOT: ClassVar[str] = "Answer with ACTION=<8 bits>.\n"

    def text_pieces(self) -> tuple[str, ...]:
        # 0 head, 1 "0", 2 "1", 3 " -> ", 4 "\n", 5 rules, 6 " right=", 7..15 "k/8", 16 foot
        return (self._HEAD, "0", "1", " -> ", "\n", self._RULES, " right=",
                *[f"{k}/8" for k in range(9)], self._FOOT)

    @property
    def max_render_pieces(self) -> int:
        return 3 + self.examples * (2 * self.width + 2) + self.turns * 11

    def render_pieces(self, state: CellularAutomataState) -> jax.Array:
        k = self.examples
        bits_in = 1 + state.inputs.astype(jnp.int32)
        bits_out = 1 + state.outputs.astype(jnp.int32)
        ex = jnp.concatenate([bits_in, jnp.full((k, 1), 3), bits_out, jnp.full((k, 1), 4)], 1)
        shown = state.guesses >= 0  # [T]
        gbits = 1 + ((state.guesses[:, None] >> jnp.arange(7, -1, -1)) & 1)  # [T, 8]
        tail = jnp.stack([jnp.full_like(state.scores, 6), 7 + state.scores,
                          jnp.full_like(state.scores, 4)], 1)
        lines = jnp.where(shown[:, None], jnp.concatenate([gbits, tail], 1), -1)
        return jnp.concatenate([
            jnp.array([0]), ex.reshape(-1), jnp.array([5]), lines.reshape(-1), jnp.array([16]),
        ]).astype(jnp.int32)

    def render_text(self, state: CellularAutomataState) -> str:
        def row(bits) -> str:
            return "".join("1" if b else "0" for b in np.asarray(bits))

        ex = "".join(f"{row(i)} -> {row(o)}\n" for i, o in zip(state.inputs, state.outputs))
        guesses = "".join(f"{g:08b} right={s}/8\n"
                          for g, s in zip(np.asarray(state.guesses), np.asarray(state.scores))
                          if g >= 0)
        return f"{self._HEAD}{ex}{self._RULES}{guesses}{self._FOOT}"


# --- baselines ----------------------------------------------------------------
def consistent_rules(state: CellularAutomataState) -> jax.Array:
    """bool[256]: rules that reproduce the examples and explain every feedback."""
    rules = jnp.arange(256, dtype=jnp.int32)
    out = apply_rule(rules[:, None, None], state.inputs[None])  # [256, K, W]
    fits = jnp.all(out == state.outputs[None], axis=(1, 2))
    right = 8 - jax.lax.population_count((rules[:, None] ^ state.guesses[None, :]) & 0xFF)
    agrees = jnp.all((right == state.scores[None, :]) | (state.guesses[None, :] < 0), axis=1)
    return fits & agrees


def _consistent(env: CellularAutomata, state: CellularAutomataState, key: jax.Array) -> jax.Array:
    """A uniformly random legal rule consistent with examples and feedback."""
    cand = consistent_rules(state) & state.legal_action_mask
    return pu.random_legal(key, jnp.where(jnp.any(cand), cand, state.legal_action_mask))


def _random(env: CellularAutomata, state: CellularAutomataState, key: jax.Array) -> jax.Array:
    return pu.random_legal(key, state.legal_action_mask)


BASELINES = {"consistent": _consistent, "random": _random}
