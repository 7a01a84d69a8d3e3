"""Multi-armed bandit (RLFT's MAB setting, Schmied et al. 2025, "LLMs are
Greedy Agents").

k arms with means mu_i ~ U(0, 1), drawn per episode. Pulling arm a gives
  gaussian:  r ~ N(mu_a, sigma^2), clipped to [-5 sigma, 1 + 5 sigma]
             (so rewards stay bounded; clipping has probability < 1e-6),
  bernoulli: r ~ Bernoulli(mu_a) in {0, 1}.
The reward is the sample itself; an episode lasts `horizon` pulls. The
per-step (pseudo-)regret is mu* - mu_a, kept in the state with its sum.

With `render="history"` (the default) the prompt shows the last `context`
pulls as RLFT does:
    Bandit: 5 arms (0-4), 50 pulls. Maximize total reward.
    Step=1 Action=3 Reward=0.42
    ...
    Pulls left: 49. Answer with ACTION=<arm>.
Gaussian rewards are shown rounded to 2 decimals, Bernoulli ones as 0/1.

With `render="summary"` it shows the pulls made so far and each arm's pull
count and mean shown reward (RLFT's summary statistics option), so a
Markovian prompt carries everything a bandit algorithm needs. Every field has
a fixed width (numbers right-aligned, an untried arm's mean is "-"), so the
prompt has one length and each arm's numbers sit at a fixed distance from the
answer, a layout a small model learns to read fast (11 characters an arm):
    Step  3/50
    0: 2  0.71
    1: 0     -
    2: 1 -0.35
    Answer ACTION=<arm>
The mean is of the rewards as shown (hundredths), rounded half up.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from jaxrl_lm.envs.bits import key_bits, normal_from_bits, uniform_from_bits
from jaxrl_lm.envs.core import Env, State, base_fields, check_choice, check_range, digit_pieces, register

SIGMAS = (0.1, 1.0, 3.0)


@struct.dataclass
class BanditState(State):
    mu: jax.Array  # f32[k] arm means (success probabilities for bernoulli)
    counts: jax.Array  # i32[k] pulls per arm
    sums: jax.Array  # f32[k] summed rewards per arm
    hist_action: jax.Array  # i32[C] last C arms pulled, oldest first
    hist_reward: jax.Array  # i32[C] their rewards in hundredths (as shown)
    shown_sums: jax.Array  # i32[k] summed rewards per arm in hundredths (as shown)
    optimal_arm: jax.Array  # i32[] argmax mu
    regret: jax.Array  # f32[] mu* - mu_a of the last pull
    total_regret: jax.Array  # f32[] summed regret this episode


def draw_reward(dist: str, sigma: float, mu_a: jax.Array, key: jax.Array) -> jax.Array:
    """One reward sample of an arm with mean mu_a (shared with best_arm),
    from bits hashed from the key (envs.bits: no threefry call per step)."""
    bits = key_bits(key, 0)
    if dist == "bernoulli":
        return (uniform_from_bits(bits) < mu_a).astype(jnp.float32)
    r = mu_a + sigma * normal_from_bits(bits)
    return jnp.clip(r, -5 * sigma, 1 + 5 * sigma).astype(jnp.float32)


def arm_means(key: jax.Array, k: int) -> jax.Array:
    """f32[k]: the arms' means, U(0, 1) each (shared with best_arm)."""
    return uniform_from_bits(key_bits(key, 1 + jnp.arange(k, dtype=jnp.uint32)))


def hundredths(r: jax.Array) -> jax.Array:
    """Reward as shown in text: round(r * 100) in float32, half to even."""
    return jnp.round(r.astype(jnp.float32) * jnp.float32(100)).astype(jnp.int32)


def format_hundredths(q: int, dist: str) -> str:
    """Host spelling of a shown reward; reward_pieces is its jit twin."""
    if dist == "bernoulli":
        return str(q // 100)
    return f"{'-' if q < 0 else ''}{abs(q) // 100}.{abs(q) % 100:02d}"


def mean_hundredths(shown_sum, count):
    """Mean of `count` shown rewards summing to `shown_sum` hundredths, in
    hundredths, rounded half up: exact integer arithmetic, so the jitted and
    host renders agree (jnp and Python ints both floor `//`)."""
    return (2 * shown_sum + count) // (2 * count)


def reward_pieces(q: jax.Array, dist: str, zero: int, minus: int, dot: int,
                  int_digits: int = 2) -> jax.Array:
    """Pieces spelling `format_hundredths(q)`: i32[int_digits + 4], -1 gaps."""
    a = jnp.abs(q)
    if dist == "bernoulli":
        gap = jnp.full((4,), -1, jnp.int32)
        return jnp.concatenate([gap, digit_pieces(a // 100, int_digits, zero)])
    sign = jnp.where(q < 0, minus, -1)[None]
    frac = jnp.stack([zero + a // 10 % 10, zero + a % 10])
    return jnp.concatenate([sign, digit_pieces(a // 100, int_digits, zero), jnp.asarray([dot]), frac])


@register
@dataclasses.dataclass(frozen=True)
class Bandit(Env):
    """k-armed bandit; see the module docstring for rewards and text."""

    k: int = 5  # number of arms, 2..100
    dist: str = "gaussian"  # "gaussian" | "bernoulli"
    sigma: float = 1.0  # gaussian reward noise: 0.1 | 1 | 3 (RLFT)
    horizon: int = 50  # pulls per episode, 1..999
    context: int = 10  # history lines shown in the prompt, 1..50 (render="history")
    render: str = "history"  # prompt: "history" (last `context` pulls) | "summary" (per arm)

    name: ClassVar[str] = "bandit"

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "k", 2, 100)
        check_choice(self, "dist", ("gaussian", "bernoulli"))
        check_choice(self, "sigma", SIGMAS)
        check_range(self, "horizon", 1, 999)
        check_range(self, "context", 1, 50)
        check_choice(self, "render", ("history", "summary"))

    @property
    def num_actions(self) -> int:
        return self.k

    @property
    def max_steps(self) -> int:
        return self.horizon

    @property
    def fixed_legal_mask(self) -> bool:
        return True  # every action is always legal

    def expected_reward(self, state: BanditState, action: jax.Array) -> jax.Array:
        # The arm's mean (the gaussian clip at 5 sigma moves it by < 1e-6).
        return state.mu[action]

    @property
    def reward_range(self) -> tuple[float, float]:
        hi = 1.0 if self.dist == "bernoulli" else 1 + 5 * self.sigma
        lo = 0.0 if self.dist == "bernoulli" else -5 * self.sigma
        return min(lo, self.illegal_penalty), hi + max(self.illegal_penalty, 0.0)

    def _init(self, key: jax.Array) -> BanditState:
        mu = arm_means(key, self.k)
        zeros_c = jnp.zeros((self.context,), jnp.int32)
        return BanditState(
            **base_fields(self.k), mu=mu, counts=jnp.zeros((self.k,), jnp.int32),
            sums=jnp.zeros((self.k,), jnp.float32), hist_action=zeros_c, hist_reward=zeros_c,
            shown_sums=jnp.zeros((self.k,), jnp.int32),
            optimal_arm=jnp.argmax(mu).astype(jnp.int32), regret=jnp.zeros((), jnp.float32),
            total_regret=jnp.zeros((), jnp.float32))

    def _step(self, state: BanditState, action: jax.Array, key: jax.Array) -> BanditState:
        r = draw_reward(self.dist, self.sigma, state.mu[action], key)
        regret = state.mu[state.optimal_arm] - state.mu[action]
        return state.replace(
            reward=r, counts=state.counts.at[action].add(1), sums=state.sums.at[action].add(r),
            hist_action=jnp.roll(state.hist_action, -1).at[-1].set(action),
            hist_reward=jnp.roll(state.hist_reward, -1).at[-1].set(hundredths(r)),
            shown_sums=state.shown_sums.at[action].add(hundredths(r)),
            regret=regret, total_regret=state.total_regret + regret)

    # --- text -------------------------------------------------------------
    def _header(self) -> str:
        return (f"Bandit: {self.k} arms (0-{self.k - 1}), {self.horizon} pulls. "
                "Maximize total reward.\n")

    def action_strings(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self.k))

    def text_pieces(self) -> tuple[str, ...]:
        if self.render == "summary":
            return (*"0123456789", "-", ".", "\n", "Step ", f"/{self.horizon}\n", ":", " ",
                    "Answer ACTION=<arm>\n")
        return (*"0123456789", "-", ".", "\n", self._header(), "Step=", " Action=",
                " Reward=", "Pulls left: ", ". Answer with ACTION=<arm>.\n")

    # digits of a step number, of an arm, of a reward
    _LINE = 1 + 3 + 1 + 2 + 1 + 6 + 1

    @property
    def max_render_pieces(self) -> int:
        if self.render == "summary":
            wa, wn, wm = self._widths()
            return 1 + wn + 1 + self.k * (wa + 1 + wn + 1 + wm + 1) + 1
        return 1 + self.context * self._LINE + 5

    def render_pieces(self, state: BanditState) -> jax.Array:
        if self.render == "summary":
            return self._summary_pieces(state)
        zero = 0
        minus, dot, nl, header, step, act, rew, left, tail = range(10, 19)
        c = self.context
        shown = jnp.minimum(state.step_count, c)
        step_c = state.step_count - c + 1 + jnp.arange(c)

        def line(step_no, arm, q):
            return jnp.concatenate([
                jnp.asarray([step]), digit_pieces(step_no, 3, zero), jnp.asarray([act]),
                digit_pieces(arm, 2, zero), jnp.asarray([rew]),
                reward_pieces(q, self.dist, zero, minus, dot), jnp.asarray([nl])])

        lines = jax.vmap(line)(jnp.maximum(step_c, 1), state.hist_action, state.hist_reward)
        lines = jnp.where((jnp.arange(c) >= c - shown)[:, None], lines, -1)
        pulls_left = self.horizon - state.step_count
        footer = jnp.concatenate([jnp.asarray([left]), digit_pieces(pulls_left, 3, zero),
                                  jnp.asarray([tail])])
        return jnp.concatenate([jnp.asarray([header]), lines.reshape(-1), footer]).astype(jnp.int32)

    def _widths(self) -> tuple[int, int, int]:
        """Summary field widths: arm, count, mean (sign, integer digits, 2 decimals)."""
        top = 1.0 if self.dist == "bernoulli" else 1 + 5 * self.sigma
        return len(str(self.k - 1)), len(str(self.horizon)), len(str(int(top))) + 4

    def _summary_pieces(self, state: BanditState) -> jax.Array:
        zero, minus, dot, nl, step, of, colon, space, tail = 0, *range(10, 18)
        wa, wn, wm = self._widths()

        def padded(n, width):  # right-aligned: leading zeros become spaces
            return jnp.where(digit_pieces(n, width, zero) < 0, space, digit_pieces(n, width, zero))

        def mean_pieces(q):  # q hundredths as "%{wm}.2f", sign before the first digit
            a = jnp.abs(q)
            ints = jnp.concatenate([jnp.asarray([-1]), digit_pieces(a // 100, wm - 4, zero)])
            first = jnp.argmax(ints >= 0)
            ints = jnp.where((jnp.arange(wm - 3) == first - 1) & (q < 0), minus, ints)
            return jnp.concatenate([jnp.where(ints < 0, space, ints), jnp.asarray([dot]),
                                    jnp.stack([zero + a // 10 % 10, zero + a % 10])])

        def line(arm, count, shown_sum):
            mean = mean_pieces(mean_hundredths(shown_sum, jnp.maximum(count, 1)))
            untried = jnp.full((wm,), space).at[-1].set(minus)
            return jnp.concatenate([
                padded(arm, wa), jnp.asarray([colon]), padded(count, wn), jnp.asarray([space]),
                jnp.where(count > 0, mean, untried), jnp.asarray([nl])])

        lines = jax.vmap(line)(jnp.arange(self.k), state.counts, state.shown_sums)
        return jnp.concatenate([
            jnp.asarray([step]), padded(state.step_count, wn), jnp.asarray([of]),
            lines.reshape(-1), jnp.asarray([tail])]).astype(jnp.int32)

    def _summary_text(self, state: BanditState) -> str:
        wa, wn, wm = self._widths()
        out = [f"Step {int(state.step_count):>{wn}}/{self.horizon}\n"]
        for arm in range(self.k):
            n, total = int(state.counts[arm]), int(state.shown_sums[arm])
            mean = format_hundredths(mean_hundredths(total, n), "gaussian") if n else "-"
            out.append(f"{arm:>{wa}}:{n:>{wn}} {mean:>{wm}}\n")
        out.append("Answer ACTION=<arm>\n")
        return "".join(out)

    def render_text(self, state: BanditState) -> str:
        if self.render == "summary":
            return self._summary_text(state)
        t, c = int(state.step_count), self.context
        shown = min(t, c)
        out = [self._header()]
        for j in range(c - shown, c):
            step_no = t - c + 1 + j
            q = int(state.hist_reward[j])
            out.append(f"Step={step_no} Action={int(state.hist_action[j])} "
                       f"Reward={format_hundredths(q, self.dist)}\n")
        out.append(f"Pulls left: {self.horizon - t}. Answer with ACTION=<arm>.\n")
        return "".join(out)


def _means(state: BanditState) -> jax.Array:
    return state.sums / jnp.maximum(state.counts, 1)


def ucb(env: Bandit, state: BanditState, key: jax.Array) -> jax.Array:
    """UCB1 (Auer et al. 2002): untried arms first, then argmax of
    mean + s * sqrt(2 ln t / n) with s = sigma (gaussian) or 1 (bernoulli)."""
    del key
    s = env.sigma if env.dist == "gaussian" else 1.0
    t = jnp.maximum(state.step_count, 1).astype(jnp.float32)
    bonus = s * jnp.sqrt(2 * jnp.log(t) / jnp.maximum(state.counts, 1))
    score = jnp.where(state.counts == 0, jnp.inf, _means(state) + bonus)
    return jnp.argmax(score).astype(jnp.int32)


def greedy(env: Bandit, state: BanditState, key: jax.Array) -> jax.Array:
    """Each arm once, then the best empirical mean forever."""
    del env, key
    score = jnp.where(state.counts == 0, jnp.inf, _means(state))
    return jnp.argmax(score).astype(jnp.int32)


def epsilon_greedy(env: Bandit, state: BanditState, key: jax.Array, eps: float = 0.1):
    """Greedy, but a uniformly random arm with probability eps."""
    k_explore, k_arm = jax.random.split(key)
    explore = jax.random.uniform(k_explore) < eps
    return jnp.where(explore, jax.random.randint(k_arm, (), 0, env.k),
                     greedy(env, state, key)).astype(jnp.int32)


def random(env: Bandit, state: BanditState, key: jax.Array) -> jax.Array:
    del state
    return jax.random.randint(key, (), 0, env.k).astype(jnp.int32)


BASELINES = {"ucb": ucb, "greedy": greedy, "epsilon_greedy": epsilon_greedy, "random": random}
