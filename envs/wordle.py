"""Wordle: find a secret 5-letter word in 6 guesses from per-letter colours.

The vocabulary is the shipped list envs/data/wordle_words.txt (about 1,600
common English words, written for this project). The secret is drawn
uniformly from it, and an action is one of its words (action index = line
number of the word in the sorted file), written as the word itself.

Feedback of a guess g against the secret s, per position i (the standard
two-pass rule, so repeated letters are scored as the official game does):
  green  (G) if g_i = s_i;
  yellow (Y) if not green and the number of earlier non-green positions j < i
             with g_j = g_i is smaller than the number of non-green secret
             positions k with s_k = g_i (each secret letter pays at most once);
  grey   (.) otherwise.
E.g. secret "apple", guess "ppppp" -> ".GG.."; secret "abbey", guess
"babes" -> "YYGG.".

Rewards: 1 on the step that finds the word (episode ends), 0 otherwise; an
episode is truncated after `turns` (6) guesses. Every word is always legal.

Prompt after one guess:
    Wordle: guess the secret 5-letter word in 6 tries. ...
    crane .GY..
    Tries left: 5. Answer with ACTION=<word>.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _guess_util as gu
from jaxrl_lm.envs.core import Env, State, base_fields, check_range, digit_pieces, register

WORDS_FILE = pathlib.Path(__file__).parent / "data" / "wordle_words.txt"
LETTERS = 5
GREY, YELLOW, GREEN = 0, 1, 2
MARKS = ".YG"  # text symbol of each mark value


@functools.lru_cache(maxsize=None)
def word_list() -> tuple[str, ...]:
    """The shipped vocabulary, in action order."""
    words = tuple(WORDS_FILE.read_text().split())
    if any(len(w) != LETTERS or not (w.isascii() and w.isalpha() and w.islower()) for w in words):
        raise ValueError(f"{WORDS_FILE} must hold lowercase {LETTERS}-letter words only")
    return words


@functools.lru_cache(maxsize=None)
def letter_table() -> np.ndarray:
    """i32[A, 5]: letters (a=0 .. z=25) of every word."""
    return np.asarray([[ord(c) - 97 for c in w] for w in word_list()], np.int32)


def feedback(guess_l: jax.Array, secret_l: jax.Array) -> jax.Array:
    """i32[5] marks (0 grey, 1 yellow, 2 green) of a guess i32[5] vs a secret i32[5]."""
    green = guess_l == secret_l
    # Secret letters still available to pay for yellows, per guess position.
    avail = jnp.sum((guess_l[:, None] == secret_l[None, :]) & ~green[None, :], axis=1)
    earlier = jnp.tril(jnp.ones((LETTERS, LETTERS), jnp.bool_), k=-1)
    used = jnp.sum((guess_l[:, None] == guess_l[None, :]) & earlier & ~green[None, :], axis=1)
    yellow = ~green & (used < avail)
    return jnp.where(green, GREEN, jnp.where(yellow, YELLOW, GREY)).astype(jnp.int32)


@struct.dataclass
class WordleState(State):
    secret: jax.Array  # i32[] action index of the secret word; fixed in an episode
    guesses: jax.Array  # i32[turns] actions guessed so far (0 beyond step_count)
    marks: jax.Array  # i32[turns, 5] feedback of each guess (0 grey, 1 yellow, 2 green)
    solved: jax.Array  # bool[] the word was found


@register
@dataclasses.dataclass(frozen=True)
class Wordle(Env):
    """Wordle over the shipped word list; see the module docstring."""

    turns: int = 6  # guesses per episode, 1..20

    name: ClassVar[str] = "wordle"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "turns", 1, 20)

    @property
    def num_actions(self) -> int:
        return len(word_list())

    @property
    def max_steps(self) -> int:
        return self.turns

    @property
    def fixed_legal_mask(self) -> bool:
        return True  # every action is always legal

    @property
    def reward_range(self) -> tuple[float, float]:
        return gu.reward_range(self, 0.0, 1.0)

    def _init(self, key: jax.Array) -> WordleState:
        return WordleState(
            **base_fields(self.num_actions),
            secret=jax.random.randint(key, (), 0, self.num_actions, jnp.int32),
            guesses=jnp.zeros((self.turns,), jnp.int32),
            marks=jnp.zeros((self.turns, LETTERS), jnp.int32), solved=jnp.zeros((), jnp.bool_))

    def _step(self, state: WordleState, action: jax.Array, key: jax.Array) -> WordleState:
        del key
        table = jnp.asarray(letter_table())
        marks = feedback(table[action], table[state.secret])
        solved = action == state.secret
        t = state.step_count
        return state.replace(
            reward=solved.astype(jnp.float32), done=solved, solved=solved,
            guesses=gu.history_slot(state.guesses, t, action),
            marks=gu.history_slot(state.marks, t, marks))

    # --- text -------------------------------------------------------------
    def _header(self) -> str:
        return (f"Wordle: guess the secret 5-letter word in {self.turns} tries. Each letter "
                "of a guess is marked G=right place, Y=in the word elsewhere, .=no more of it.\n")

    _FOOTER: ClassVar[str] = ". Answer with ACTION=<word>.\n"

    def action_strings(self) -> tuple[str, ...]:
        return word_list()

    def text_pieces(self) -> tuple[str, ...]:
        # 0..25 letters, 26..28 marks ".YG", 29 " ", 30 "\n", 31 header,
        # 32 "Tries left: ", 33 footer, 34..43 digits
        letters = tuple(chr(97 + i) for i in range(26))
        return (*letters, *MARKS, " ", "\n", self._header(), "Tries left: ", self._FOOTER,
                *"0123456789")

    @property
    def max_render_pieces(self) -> int:
        return 1 + self.turns * (2 * LETTERS + 2) + 1 + 2 + 1

    def render_pieces(self, state: WordleState) -> jax.Array:
        letters_tl = jnp.asarray(letter_table())[state.guesses]
        fixed = lambda p: jnp.full((self.turns, 1), p, jnp.int32)  # noqa: E731
        lines = jnp.concatenate([letters_tl, fixed(29), 26 + state.marks, fixed(30)], axis=1)
        lines = jnp.where((jnp.arange(self.turns) < state.step_count)[:, None], lines, -1)
        left = digit_pieces(self.turns - state.step_count, 2, 34)
        return jnp.concatenate([jnp.asarray([31]), lines.reshape(-1), jnp.asarray([32]), left,
                                jnp.asarray([33])]).astype(jnp.int32)

    def render_text(self, state: WordleState) -> str:
        words, t = word_list(), int(state.step_count)
        lines = [f"{words[int(state.guesses[i])]} {''.join(MARKS[int(m)] for m in state.marks[i])}\n"
                 for i in range(t)]
        return self._header() + "".join(lines) + f"Tries left: {self.turns - t}{self._FOOTER}"


# --- baselines -------------------------------------------------------------------
def consistent_mask(env: Wordle, state: WordleState) -> jax.Array:
    """bool[A]: words that, as the secret, would have produced every feedback seen."""
    table = jnp.asarray(letter_table())
    marks_tal = jax.vmap(lambda g: jax.vmap(lambda s: feedback(g, s))(table))(table[state.guesses])
    agree_ta = jnp.all(marks_tal == state.marks[:, None, :], axis=-1)
    past_t = jnp.arange(env.turns) < state.step_count
    return jnp.all(agree_ta | ~past_t[:, None], axis=0) & state.legal_action_mask


def consistent(env: Wordle, state: WordleState, key: jax.Array) -> jax.Array:
    """A uniformly random word consistent with all the feedback so far."""
    return gu.choose(consistent_mask(env, state), key)


def random(env: Wordle, state: WordleState, key: jax.Array) -> jax.Array:
    """A uniformly random word (every word is legal)."""
    del state
    return jax.random.randint(key, (), 0, env.num_actions, jnp.int32)


BASELINES = {"consistent": consistent, "random": random}
