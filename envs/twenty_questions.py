"""Twenty questions over a shipped knowledge base (envs/data/twenty_questions.json).

A hidden object is drawn uniformly from the knowledge base (165 everyday objects
x 47 yes/no attributes, hand-written; every object has a distinct attribute
row). Actions 0..A-1 ask one attribute ("ask:<attr>"), actions A..A+O-1 guess
one object ("guess:<object>"). The answer to a question is the object's table
entry. Asked questions become illegal; guesses are always legal.

Rewards: a correct guess gives +1 and ends the episode; a wrong guess ends it
with 0 (no second chance, so guessing early is costly); running out of the
`turns` budget (questions and the guess together, 20 by default) ends it with 0.

The prompt lists the answered questions in attribute order (not in the order
asked: the answers, not their order, are the observation), the questions not
yet asked and the turns left. Object names are not listed (too long for a
character-level prompt): the agent must know the vocabulary of objects.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs.core import Env, State, base_fields, check_range, register

_DATA = pathlib.Path(__file__).parent / "data" / "twenty_questions.json"


def load_knowledge_base(path: pathlib.Path = _DATA) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """(attributes, objects, table bool[O, A]) from the JSON file."""
    data = json.loads(path.read_text())
    attrs = tuple(data["attributes"])
    objects = tuple(data["objects"])
    table = np.zeros((len(objects), len(attrs)), bool)
    col = {a: j for j, a in enumerate(attrs)}
    for i, obj in enumerate(objects):
        for a in data["objects"][obj].split():
            if a not in col:
                raise ValueError(f"{path}: object {obj!r} has unknown attribute {a!r}")
            table[i, col[a]] = True
    return attrs, objects, table


ATTRIBUTES, OBJECTS, TABLE = load_knowledge_base()


@struct.dataclass
class TwentyQuestionsState(State):
    secret: jax.Array  # i32[] index of the hidden object in OBJECTS
    asked: jax.Array  # bool[A] questions already asked
    won: jax.Array  # bool[] the hidden object was guessed


@register
@dataclasses.dataclass(frozen=True)
class TwentyQuestions(Env):
    turns: int = 20  # questions + final guess allowed, 1..50

    name: ClassVar[str] = "twenty_questions"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "turns", 1, 50)

    @property
    def num_actions(self) -> int:
        return len(ATTRIBUTES) + len(OBJECTS)

    @property
    def max_steps(self) -> int:
        return self.turns

    @property
    def reward_range(self) -> tuple[float, float]:
        return pu.reward_range(self, 0.0, 1.0)

    def _init(self, key: jax.Array) -> TwentyQuestionsState:
        return TwentyQuestionsState(
            **base_fields(self.num_actions),
            secret=jax.random.randint(key, (), 0, len(OBJECTS), jnp.int32),
            asked=jnp.zeros((len(ATTRIBUTES),), jnp.bool_),
            won=jnp.zeros((), jnp.bool_),
        )

    def _step(self, state: TwentyQuestionsState, action: jax.Array, key: jax.Array):
        n_attr = len(ATTRIBUTES)
        is_guess = action >= n_attr
        won = is_guess & (action - n_attr == state.secret)
        asked = state.asked | (jnp.arange(n_attr) == action)
        legal = jnp.concatenate([~asked, jnp.ones((len(OBJECTS),), jnp.bool_)])
        return state.replace(
            reward=won.astype(jnp.float32), done=is_guess, legal_action_mask=legal,
            asked=asked, won=won,
        )

    # --- text hooks -----------------------------------------------------------
    def action_strings(self) -> tuple[str, ...]:
        return tuple(f"ask:{a}" for a in ATTRIBUTES) + tuple(f"guess:{o}" for o in OBJECTS)

    _FIXED: ClassVar[tuple[str, ...]] = (
        "Twenty questions: find the hidden everyday object. Ask yes/no questions, then guess it.\nAsked:",
        "\nUnasked:",
        "\nTurns left: ",
        "\nAnswer with ACTION=ask:<question> or ACTION=guess:<object>.\n",
    )

    def text_pieces(self) -> tuple[str, ...]:
        numbers = tuple(str(i) for i in range(self.turns + 1))
        return (self._FIXED + numbers + tuple(f" {a}=yes" for a in ATTRIBUTES)
                + tuple(f" {a}=no" for a in ATTRIBUTES) + tuple(f" {a}" for a in ATTRIBUTES))

    @property
    def max_render_pieces(self) -> int:
        return 5 + 2 * len(ATTRIBUTES)

    def render_pieces(self, state: TwentyQuestionsState) -> jax.Array:
        n_attr = len(ATTRIBUTES)
        yes_0 = len(self._FIXED) + self.turns + 1  # piece id of the first " a=yes"
        attr = jnp.arange(n_attr)
        answer = jnp.asarray(TABLE)[state.secret]
        asked = jnp.where(state.asked, jnp.where(answer, yes_0, yes_0 + n_attr) + attr, -1)
        unasked = jnp.where(state.asked, -1, yes_0 + 2 * n_attr + attr)
        left = len(self._FIXED) + jnp.clip(self.turns - state.step_count, 0, self.turns)
        return jnp.concatenate([
            jnp.array([0]), asked, jnp.array([1]), unasked, jnp.array([2]),
            left[None], jnp.array([3]),
        ]).astype(jnp.int32)

    def render_text(self, state: TwentyQuestionsState) -> str:
        secret, asked = int(state.secret), np.asarray(state.asked)
        answers = "".join(f" {a}={'yes' if TABLE[secret, j] else 'no'}"
                          for j, a in enumerate(ATTRIBUTES) if asked[j])
        unasked = "".join(f" {a}" for j, a in enumerate(ATTRIBUTES) if not asked[j])
        left = min(max(self.turns - int(state.step_count), 0), self.turns)
        f = self._FIXED
        return f"{f[0]}{answers}{f[1]}{unasked}{f[2]}{left}{f[3]}"


# --- baselines ----------------------------------------------------------------
def candidates(state: TwentyQuestionsState) -> jax.Array:
    """bool[O]: objects whose rows agree with every answer received so far."""
    table = jnp.asarray(TABLE)
    differs = (table != table[state.secret][None, :]) & state.asked[None, :]
    return ~jnp.any(differs, axis=1)


def _halving(env: TwentyQuestions, state: TwentyQuestionsState, key: jax.Array) -> jax.Array:
    """Ask the unasked question whose answer splits the candidates most evenly;
    guess (a random candidate) once one is left, no question splits them, or on
    the last turn."""
    k_ask, k_guess = jax.random.split(key)
    cand = candidates(state)
    n = jnp.sum(cand)
    yes = cand.astype(jnp.float32) @ jnp.asarray(TABLE, jnp.float32)
    split = jnp.where(state.asked, -1.0, jnp.minimum(yes, n - yes))
    ask = pu.argmax_random_tie(k_ask, split)
    guess = len(ATTRIBUTES) + pu.random_legal(k_guess, cand)
    last_turn = env.turns - state.step_count <= 1
    return jnp.where((n <= 1) | (jnp.max(split) <= 0) | last_turn, guess, ask)


def _random(env: TwentyQuestions, state: TwentyQuestionsState, key: jax.Array) -> jax.Array:
    return pu.random_legal(key, state.legal_action_mask)


BASELINES = {"halving": _halving, "random": _random}
