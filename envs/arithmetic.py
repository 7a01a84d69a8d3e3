"""Single-turn, exactly verifiable arithmetic: a + b or a * b.

Both operands have exactly `digits` digits (0..9 when digits=1), drawn
uniformly; the operator is drawn uniformly from `ops`. The answer is the exact
integer. Actions are the candidate answers 0..max_answer, written in decimal,
so the shared `ACTION=<n>` parser reads them; num_actions = max_answer + 1 is
capped at MAX_ACTIONS (20000): 1-4 digit addition and 1-2 digit multiplication
fit, 3-digit multiplication (answers up to 998001) is refused with a
ValueError. Completions may carry a scratchpad before the final ACTION=<n>.

Reward: 1 if the answer is exactly right, else 0; the episode always ends after
one step. Every action is legal.

Prompt: "full" (default) is "Compute a+b.\nWork it out, then answer with
ACTION=<number>.\n"; "short" is the first line only, "Compute a+b.\n", for a
model trained from scratch, to which the constant instruction line teaches
nothing and which would be most of the prompt's tokens.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs.core import Env, State, base_fields, check_choice, check_range, register

MAX_ACTIONS = 20_000
_OPS = "+*"
PROMPTS = ("full", "short")


@struct.dataclass
class ArithmeticState(State):
    a: jax.Array  # i32[] left operand
    b: jax.Array  # i32[] right operand
    op: jax.Array  # i32[] 0 = "+", 1 = "*"
    answer: jax.Array  # i32[] the exact result
    won: jax.Array  # bool[] the answer given was right


def max_answer(digits: int, ops: str) -> int:
    top = 10**digits - 1
    return max({"+": 2 * top, "*": top * top}[o] for o in ops)


@register
@dataclasses.dataclass(frozen=True)
class Arithmetic(Env):
    digits: int = 2  # digits per operand, 1..4
    ops: str = "+*"  # operators to draw from: a non-empty subset of "+*"
    prompt: str = "full"  # "full": the problem, then the answer format | "short": the problem

    name: ClassVar[str] = "arithmetic"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "digits", 1, 4)
        check_choice(self, "prompt", PROMPTS)
        if (not isinstance(self.ops, str) or not self.ops or set(self.ops) - set(_OPS)
                or len(set(self.ops)) != len(self.ops)):
            raise ValueError(f"Arithmetic.ops={self.ops!r} must be a non-empty string of "
                             f"distinct characters from {_OPS!r}, e.g. '+', '*' or '+*'")
        top = max_answer(self.digits, self.ops)
        if top + 1 > MAX_ACTIONS:
            raise ValueError(
                f"Arithmetic(digits={self.digits}, ops={self.ops!r}) has answers up to {top}, "
                f"but num_actions (one per answer 0..max) is capped at {MAX_ACTIONS}: "
                f"use digits<=4 for '+' and digits<=2 for '*'")

    @property
    def num_actions(self) -> int:
        return max_answer(self.digits, self.ops) + 1

    @property
    def max_steps(self) -> int:
        return 1

    @property
    def fixed_legal_mask(self) -> bool:
        return True  # every action is always legal

    @property
    def reward_range(self) -> tuple[float, float]:
        return pu.reward_range(self, 0.0, 1.0)

    def _init(self, key: jax.Array) -> ArithmeticState:
        # One threefry block (two uint32 words) for a, b and op: three
        # jax.random.randint calls cost ~15 blocks, which made init (run at
        # every step under AutoReset) most of the env's cost.
        w = jax.random.bits(key, (2,), jnp.uint32)
        lo, hi = (0 if self.digits == 1 else 10 ** (self.digits - 1)), 10**self.digits
        n_ops = len(self.ops)
        a = lo + pu.below(w[0], hi - lo).astype(jnp.int32)
        b_op = pu.below(w[1], (hi - lo) * n_ops).astype(jnp.int32)
        b = lo + b_op // n_ops
        codes = jnp.array([_OPS.index(o) for o in self.ops], jnp.int32)
        op = codes[b_op % n_ops]
        return ArithmeticState(
            **base_fields(self.num_actions), a=a, b=b, op=op,
            answer=jnp.where(op == 0, a + b, a * b), won=jnp.zeros((), jnp.bool_),
        )

    def _step(self, state: ArithmeticState, action: jax.Array, key: jax.Array):
        won = action == state.answer
        return state.replace(reward=won.astype(jnp.float32), done=jnp.ones((), jnp.bool_),
                             won=won)

    # --- text hooks -----------------------------------------------------------
    def action_strings(self) -> tuple[str, ...]:
        return tuple(str(n) for n in range(self.num_actions))

    _HEAD: ClassVar[str] = "Compute "
    _FOOT: ClassVar[str] = ".\nWork it out, then answer with ACTION=<number>.\n"
    _SHORT_FOOT: ClassVar[str] = ".\n"

    def _foot(self) -> str:
        return self._FOOT if self.prompt == "full" else self._SHORT_FOOT

    def text_pieces(self) -> tuple[str, ...]:
        # 0 head, 1..10 "0".."9", 11 "+", 12 "*", 13 foot
        return (self._HEAD, *[str(d) for d in range(10)], *_OPS, self._foot())

    @property
    def max_render_pieces(self) -> int:
        return 3 + 2 * self.digits

    def render_pieces(self, state: ArithmeticState) -> jax.Array:
        d = self.digits
        return jnp.concatenate([
            jnp.array([0]), pu.digit_slots(state.a, d, 1), (11 + state.op)[None],
            pu.digit_slots(state.b, d, 1), jnp.array([13]),
        ]).astype(jnp.int32)

    def render_text(self, state: ArithmeticState) -> str:
        return f"{self._HEAD}{int(state.a)}{_OPS[int(state.op)]}{int(state.b)}{self._foot()}"


def _solver(env: Arithmetic, state: ArithmeticState, key: jax.Array) -> jax.Array:
    return state.answer.astype(jnp.int32)


def _random(env: Arithmetic, state: ArithmeticState, key: jax.Array) -> jax.Array:
    return jax.random.randint(key, (), 0, env.num_actions, jnp.int32)


BASELINES = {"solver": _solver, "random": _random}
