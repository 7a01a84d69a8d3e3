"""Mastermind: crack a secret code of 4 pegs from black/white feedback.

The secret is 4 colours out of `colours` (6 or 10), drawn uniformly among the
codes the `repeats` option allows. An action is one whole code: with repeats
there are colours**4 codes, indexed lexicographically (action = sum d_i *
colours**(3-i)); without repeats the colours**(4) permutations (360 or 5040),
also in lexicographic order. Colours are written as digits: "1".."6" for 6
colours, "0".."9" for 10, so a code is written like "1234".

Feedback of a guess g against the secret s (Knuth 1977):
  black = #{i : g_i = s_i}                      (right colour, right place)
  white = sum_c min(#c in g, #c in s) - black   (right colour, wrong place)

Rewards: 1 on the step that cracks the code (black = 4, episode ends), 0 for
every other guess; an episode is truncated after `turns` (12) guesses. Every
code is legal at every turn, so the legal mask is all True.

Prompt (6 colours, after two guesses):
    Mastermind: guess the secret 4-digit code (digits 1-6, repeats allowed) ...
    1122 B1 W0
    3345 B0 W2
    Turns left: 10. Answer with ACTION=<code like 1234>.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _guess_util as gu
from jaxrl_lm.envs.core import Env, State, base_fields, check_choice, check_range, digit_pieces, register

PEGS = 4


@functools.lru_cache(maxsize=None)
def code_table(colours: int, repeats: bool) -> np.ndarray:
    """i32[A, 4]: the colours (0-based) of every code, in action order."""
    if repeats:
        codes = itertools.product(range(colours), repeat=PEGS)
    else:
        codes = itertools.permutations(range(colours), PEGS)
    return np.asarray(list(codes), np.int32)


def feedback(guess_p: jax.Array, secret_p: jax.Array, colours: int) -> tuple[jax.Array, jax.Array]:
    """(black, white) i32[] of a guess i32[4] against a secret i32[4]."""
    black = jnp.sum(guess_p == secret_p, dtype=jnp.int32)
    cnt_g = jnp.sum(jax.nn.one_hot(guess_p, colours, dtype=jnp.int32), axis=0)
    cnt_s = jnp.sum(jax.nn.one_hot(secret_p, colours, dtype=jnp.int32), axis=0)
    return black, jnp.sum(jnp.minimum(cnt_g, cnt_s)) - black


@struct.dataclass
class MastermindState(State):
    secret: jax.Array  # i32[4] the secret colours (0-based); fixed in an episode
    secret_action: jax.Array  # i32[] action index of the secret code
    guesses: jax.Array  # i32[turns] actions guessed so far (0 beyond step_count)
    black: jax.Array  # i32[turns] black pegs of each guess
    white: jax.Array  # i32[turns] white pegs of each guess
    solved: jax.Array  # bool[] the code was cracked


@register
@dataclasses.dataclass(frozen=True)
class Mastermind(Env):
    """Mastermind, 4 pegs; see the module docstring for rewards and text."""

    colours: int = 6  # number of colours: 6 | 10
    repeats: bool = True  # may a colour appear more than once in a code
    turns: int = 12  # guesses per episode, 1..99

    name: ClassVar[str] = "mastermind"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "colours", (6, 10))
        check_choice(self, "repeats", (True, False))
        check_range(self, "turns", 1, 99)

    @property
    def codes(self) -> np.ndarray:
        return code_table(self.colours, self.repeats)

    @property
    def num_actions(self) -> int:
        return len(self.codes)

    @property
    def max_steps(self) -> int:
        return self.turns

    @property
    def fixed_legal_mask(self) -> bool:
        return True  # every action is always legal

    @property
    def reward_range(self) -> tuple[float, float]:
        return gu.reward_range(self, 0.0, 1.0)

    def _init(self, key: jax.Array) -> MastermindState:
        secret_action = jax.random.randint(key, (), 0, self.num_actions, jnp.int32)
        zeros_t = jnp.zeros((self.turns,), jnp.int32)
        return MastermindState(
            **base_fields(self.num_actions), secret=jnp.asarray(self.codes)[secret_action],
            secret_action=secret_action, guesses=zeros_t, black=zeros_t, white=zeros_t,
            solved=jnp.zeros((), jnp.bool_))

    def _step(self, state: MastermindState, action: jax.Array, key: jax.Array):
        del key
        black, white = feedback(jnp.asarray(self.codes)[action], state.secret, self.colours)
        solved = black == PEGS
        t = state.step_count
        return state.replace(
            reward=solved.astype(jnp.float32), done=solved, solved=solved,
            guesses=gu.history_slot(state.guesses, t, action),
            black=gu.history_slot(state.black, t, black),
            white=gu.history_slot(state.white, t, white))

    # --- text -------------------------------------------------------------
    @property
    def _first_digit(self) -> int:
        return 1 if self.colours < 10 else 0

    def _header(self) -> str:
        lo = self._first_digit
        rule = "repeats allowed" if self.repeats else "all digits different"
        return (f"Mastermind: guess the secret 4-digit code (digits {lo}-{lo + self.colours - 1}, "
                f"{rule}) in {self.turns} tries. B=right digit, right place; "
                "W=right digit, wrong place.\n")

    _FOOTER: ClassVar[str] = ". Answer with ACTION=<code like 1234>.\n"

    def _code_text(self, index: int) -> str:
        return "".join(str(d + self._first_digit) for d in self.codes[index])

    def action_strings(self) -> tuple[str, ...]:
        return tuple(self._code_text(i) for i in range(len(self.codes)))

    def text_pieces(self) -> tuple[str, ...]:
        # 0..9 digits, 10 header, 11 " B", 12 " W", 13 "\n", 14 "Turns left: ", 15 footer
        return (*"0123456789", self._header(), " B", " W", "\n", "Turns left: ", self._FOOTER)

    @property
    def max_render_pieces(self) -> int:
        return 1 + self.turns * (PEGS + 5) + 1 + 2 + 1

    def render_pieces(self, state: MastermindState) -> jax.Array:
        code_tp = jnp.asarray(self.codes)[state.guesses] + self._first_digit
        fixed = lambda p: jnp.full((self.turns, 1), p, jnp.int32)  # noqa: E731
        lines = jnp.concatenate([code_tp, fixed(11), state.black[:, None], fixed(12),
                                 state.white[:, None], fixed(13)], axis=1)
        shown_t = jnp.arange(self.turns) < state.step_count
        lines = jnp.where(shown_t[:, None], lines, -1)
        left = digit_pieces(self.turns - state.step_count, 2, 0)
        return jnp.concatenate([jnp.asarray([10]), lines.reshape(-1), jnp.asarray([14]), left,
                                jnp.asarray([15])]).astype(jnp.int32)

    def render_text(self, state: MastermindState) -> str:
        t = int(state.step_count)  # only the guessed codes' text, not all action_strings()
        lines = [f"{self._code_text(int(state.guesses[i]))} B{int(state.black[i])} W{int(state.white[i])}\n"
                 for i in range(t)]
        return self._header() + "".join(lines) + f"Turns left: {self.turns - t}{self._FOOTER}"


# --- baselines -------------------------------------------------------------------
def consistent_mask(env: Mastermind, state: MastermindState) -> jax.Array:
    """bool[A]: codes that would have produced every feedback seen so far."""
    codes = jnp.asarray(env.codes)
    counts_ac = jnp.sum(jax.nn.one_hot(codes, env.colours, dtype=jnp.int32), axis=1)
    guess_tp = codes[state.guesses]
    black_ta = jnp.sum(codes[None] == guess_tp[:, None], axis=-1, dtype=jnp.int32)
    total_ta = jnp.sum(jnp.minimum(counts_ac[None], counts_ac[state.guesses][:, None]), axis=-1)
    agree_ta = (black_ta == state.black[:, None]) & (total_ta - black_ta == state.white[:, None])
    past_t = jnp.arange(env.turns) < state.step_count
    return jnp.all(agree_ta | ~past_t[:, None], axis=0) & state.legal_action_mask


def consistent(env: Mastermind, state: MastermindState, key: jax.Array) -> jax.Array:
    """A uniformly random code consistent with all the feedback so far."""
    return gu.choose(consistent_mask(env, state), key)


def random(env: Mastermind, state: MastermindState, key: jax.Array) -> jax.Array:
    """A uniformly random code (every code is legal)."""
    del state
    return jax.random.randint(key, (), 0, env.num_actions, jnp.int32)


BASELINES = {"consistent": consistent, "random": random}
