"""Fixed-budget best-arm identification (PAPRIKA's bandit task, Tajwar et
al. 2025, "Training a Generally Curious Agent").

k arms with means mu_i ~ U(0, 1); the agent has `budget` pulls (observed in
the prompt, reward 0) and must then name an arm. Actions 0..k-1 pull arm i
("pull:i"); actions k..2k-1 choose arm i ("choose:i") and end the episode
with reward 1 if mu_i is the largest mean, else 0. Choosing early is
allowed; once the budget is spent only choices are legal. Pull outcomes are
drawn as in envs/bandit.py (Bernoulli by default, or clipped Gaussian).

The prompt shows the sufficient statistics, pulls and total per arm:
    Best arm: 5 arms (0-4), 20 pulls, then choose the arm with the highest mean.
    Arm 0: pulls=3 total=2
    ...
    Pulls left: 17. Answer with ACTION=pull:<arm> or ACTION=choose:<arm>.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_lm.envs.bandit import SIGMAS, arm_means, draw_reward, format_hundredths, hundredths, reward_pieces
from jaxrl_lm.envs.core import Env, State, base_fields, check_choice, check_range, digit_pieces, register


@struct.dataclass
class BestArmState(State):
    mu: jax.Array  # f32[k] arm means
    counts: jax.Array  # i32[k] pulls per arm
    sums: jax.Array  # f32[k] summed pull outcomes per arm
    shown_sums: jax.Array  # i32[k] summed outcomes in hundredths (as shown)
    best_arm: jax.Array  # i32[] argmax mu
    chosen: jax.Array  # i32[] the named arm, -1 until chosen
    success: jax.Array  # bool[] the named arm is a best arm


@register
@dataclasses.dataclass(frozen=True)
class BestArm(Env):
    """Pull `budget` times, then name the best arm; reward 1 if right."""

    k: int = 5  # number of arms, 2..50
    budget: int = 20  # pulls before the agent must choose, 1..60
    dist: str = "bernoulli"  # "bernoulli" | "gaussian"
    sigma: float = 1.0  # gaussian noise: 0.1 | 1 | 3

    name: ClassVar[str] = "best_arm"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "k", 2, 50)
        check_range(self, "budget", 1, 60)
        check_choice(self, "dist", ("gaussian", "bernoulli"))
        check_choice(self, "sigma", SIGMAS)

    @property
    def num_actions(self) -> int:
        return 2 * self.k

    @property
    def max_steps(self) -> int:
        return self.budget + 1

    @property
    def reward_range(self) -> tuple[float, float]:
        return min(0.0, self.illegal_penalty), max(1.0, self.illegal_penalty)

    def _mask(self, step_count: jax.Array) -> jax.Array:
        pull_ok = step_count < self.budget
        return jnp.concatenate([jnp.full((self.k,), pull_ok), jnp.ones((self.k,), jnp.bool_)])

    def _init(self, key: jax.Array) -> BestArmState:
        mu = arm_means(key, self.k)
        base = base_fields(self.num_actions)
        base["legal_action_mask"] = self._mask(jnp.zeros((), jnp.int32))
        return BestArmState(
            **base, mu=mu, counts=jnp.zeros((self.k,), jnp.int32),
            sums=jnp.zeros((self.k,), jnp.float32), shown_sums=jnp.zeros((self.k,), jnp.int32),
            best_arm=jnp.argmax(mu).astype(jnp.int32), chosen=jnp.full((), -1, jnp.int32),
            success=jnp.zeros((), jnp.bool_))

    def _step(self, state: BestArmState, action: jax.Array, key: jax.Array) -> BestArmState:
        choose = action >= self.k
        arm = action % self.k
        r = draw_reward(self.dist, self.sigma, state.mu[arm], key)
        pulled = jnp.where(choose, 0, 1)
        success = choose & (state.mu[arm] >= state.mu.max())
        return state.replace(
            reward=success.astype(jnp.float32), done=choose,
            legal_action_mask=self._mask(state.step_count + 1),
            counts=state.counts.at[arm].add(pulled),
            sums=state.sums.at[arm].add(jnp.where(choose, 0.0, r)),
            shown_sums=state.shown_sums.at[arm].add(pulled * hundredths(r)),
            chosen=jnp.where(choose, arm, -1).astype(jnp.int32), success=success)

    # --- text -------------------------------------------------------------
    def _header(self) -> str:
        return (f"Best arm: {self.k} arms (0-{self.k - 1}), {self.budget} pulls, "
                "then choose the arm with the highest mean.\n")

    def action_strings(self) -> tuple[str, ...]:
        return tuple(f"pull:{i}" for i in range(self.k)) + tuple(
            f"choose:{i}" for i in range(self.k))

    _TAIL_PULL = ". Answer with ACTION=pull:<arm> or ACTION=choose:<arm>.\n"
    _TAIL_CHOOSE = ". Answer with ACTION=choose:<arm>.\n"

    def text_pieces(self) -> tuple[str, ...]:
        return (*"0123456789", "-", ".", "\n", self._header(), "Arm ", ": pulls=", " total=",
                "Pulls left: ", self._TAIL_PULL, self._TAIL_CHOOSE)

    @property
    def max_render_pieces(self) -> int:
        return 1 + self.k * (1 + 2 + 1 + 2 + 1 + 7 + 1) + 4

    def render_pieces(self, state: BestArmState) -> jax.Array:
        minus, dot, nl, header, arm_p, pulls_p, total_p, left, tail_pull, tail_choose = range(10, 20)

        def line(arm, count, q):
            return jnp.concatenate([
                jnp.asarray([arm_p]), digit_pieces(arm, 2, 0), jnp.asarray([pulls_p]),
                digit_pieces(count, 2, 0), jnp.asarray([total_p]),
                reward_pieces(q, self.dist, 0, minus, dot, int_digits=3), jnp.asarray([nl])])

        lines = jax.vmap(line)(jnp.arange(self.k), state.counts, state.shown_sums)
        left_n = jnp.maximum(self.budget - state.step_count, 0)
        tail = jnp.where(left_n > 0, tail_pull, tail_choose)
        footer = jnp.concatenate([jnp.asarray([left]), digit_pieces(left_n, 2, 0), tail[None]])
        return jnp.concatenate([jnp.asarray([header]), lines.reshape(-1), footer]).astype(jnp.int32)

    def render_text(self, state: BestArmState) -> str:
        out = [self._header()]
        for i in range(self.k):
            total = format_hundredths(int(state.shown_sums[i]), self.dist)
            out.append(f"Arm {i}: pulls={int(state.counts[i])} total={total}\n")
        left_n = max(self.budget - int(state.step_count), 0)
        out.append(f"Pulls left: {left_n}")
        out.append(self._TAIL_PULL if left_n > 0 else self._TAIL_CHOOSE)
        return "".join(out)


def uniform_then_commit(env: BestArm, state: BestArmState, key: jax.Array) -> jax.Array:
    """Round-robin pulls (least-pulled arm first) for the whole budget, then
    choose the best empirical mean (lowest index on ties)."""
    del key
    explore = jnp.argmin(state.counts)
    means = state.sums / jnp.maximum(state.counts, 1)
    means = jnp.where(state.counts > 0, means, -jnp.inf)
    commit = env.k + jnp.argmax(means)
    return jnp.where(state.step_count < env.budget, explore, commit).astype(jnp.int32)


def random(env: BestArm, state: BestArmState, key: jax.Array) -> jax.Array:
    """A uniformly random legal action (pull or early choice)."""
    del env
    logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


BASELINES = {"uniform": uniform_then_commit, "random": random}
