"""A prompt dataset as a single-turn task of the one jitted rollout.

The rollout (`jaxrl_lm.rollout.make_rollout`) plays envs: it renders a
state's prompt, samples a completion, reads an action from it and steps the
env. A `PromptTask` fills those roles for a dataset of prompts with checkable
answers, so free-form chains of thought go through the same sampler,
rollout, advantages and train step as env play:

    state     the row being answered (`row`) and the env fields
    render    the row's prompt ids, tokenized once (`PromptSet`)
    grade     the verifier on the completion ids against the row's reference
              answer (jaxrl_lm.verifiers): action 1 if right, 0 if wrong;
              valid = an answer was found after the marker
    step      reward = action (1.0 right, else 0.0); the episode ends

With `shaping.standin_reward: false` (the data presets set it) a completion
with no answer earns 0, whatever the random stand-in action; with
`shaping.invalid_penalty` it is also penalised.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.data.prompts import PromptSet
from jaxrl_lm.envs.core import State, base_fields

# (ids i32[N], length i32[], ref u8[A], ref_len i32[]) -> (correct bool[], found bool[])
Grader = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@struct.dataclass
class PromptState(State):
    row: jax.Array  # i32[] the dataset row being answered


@dataclasses.dataclass(eq=False)
class PromptTask:
    """Env and text interface in one, over a tokenized `PromptSet`.

    Args:
      prompts: the tokenized prompts (its ids' width is the prompt length P).
      refs, ref_len: u8[N, A], i32[N]: each row's reference answer, as the
        grader compares it (normalised on the host).
      grader: the jittable verifier (see `Grader`).
      pad_id: the tokenizer's pad id (the prompt table's padding).
    """

    prompts: PromptSet
    refs: np.ndarray
    ref_len: np.ndarray
    grader: Grader
    pad_id: int

    name = "prompts"
    max_steps = 1
    num_actions = 2  # the verdict: 0 wrong, 1 right

    def __post_init__(self):
        n = len(self.prompts)
        if self.refs.shape[0] != n or self.ref_len.shape != (n,):
            raise ValueError(f"PromptTask: {n} prompts but references of shape "
                             f"{self.refs.shape} / {self.ref_len.shape}")
        self._ids = jnp.asarray(self.prompts.ids)
        self._len = jnp.asarray(self.prompts.lengths)
        self._refs, self._ref_len = jnp.asarray(self.refs), jnp.asarray(self.ref_len)
        self.max_prompt_len = int(self.prompts.ids.shape[1])

    def __len__(self) -> int:
        return len(self.prompts)

    # --- env side ---------------------------------------------------------
    def init_task(self, key: jax.Array, row: jax.Array) -> PromptState:
        del key
        return PromptState(**base_fields(self.num_actions), row=jnp.asarray(row, jnp.int32))

    def init(self, key: jax.Array) -> PromptState:
        """A uniformly drawn row (the trainer passes rows in epoch order instead)."""
        return self.init_task(key, jax.random.randint(key, (), 0, len(self), jnp.int32))

    def step(self, state: PromptState, action: jax.Array, key: jax.Array) -> PromptState:
        del key
        return state.replace(reward=(action == 1).astype(jnp.float32),
                             done=jnp.ones((), jnp.bool_), step_count=state.step_count + 1)

    # --- text side --------------------------------------------------------
    def render(self, state: PromptState) -> tuple[jax.Array, jax.Array]:
        return self._ids[state.row], self._len[state.row]

    def full_length(self, state: PromptState) -> jax.Array:
        return self._len[state.row]  # built to fit: never cut

    def grade(self, state: PromptState, ids: jax.Array, length: jax.Array):
        correct, found = self.grader(ids, length, self._refs[state.row], self._ref_len[state.row])
        return correct.astype(jnp.int32), found

    def expected_reward(self, state: Any, action: jax.Array) -> jax.Array:
        raise ValueError("prompts: a dataset task has no expected reward (shaping.expected_reward)")

    has_expected_reward = False
