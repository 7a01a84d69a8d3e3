"""The environment protocol shared by every env in this package.

Functional and pgx-like: an `Env` is a frozen (hashable) dataclass of static
options, so `jax.jit` caches on it; all dynamic data lives in the `State`.

    env = envs.make("tictactoe", opponent="minimax")
    state = env.init(key)                     # jittable, vmappable
    state = env.step(state, action, key)      # state.reward, state.done, ...

Shared semantics, enforced once here:
  * terminal states are absorbing: stepping a done state returns it unchanged
    with reward 0;
  * illegal actions (outside [0, num_actions) or masked out by
    `legal_action_mask`) follow `illegal`:
      "end"    -> reward `illegal_penalty` and the episode ends;
      "random" -> reward `illegal_penalty` plus the reward of a uniformly
                  random legal action played instead (RLFT's rule);
  * `step_count` counts agent steps; `max_steps` truncates (done=True).

Each env subclasses `Env` and implements `_init(key)` and `_step(state,
action, key)`; `_step` only ever sees legal actions of non-terminal states.
Single-agent from the learner's side: opponents live inside `_step`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs.bits import derive_key

ILLEGAL_RULES = ("end", "random")


@struct.dataclass
class State:
    """Fields every env state carries. Envs subclass this and add their own.

    reward: f32[]            reward of the transition that produced this state
    done: bool[]             episode over (terminal or truncated)
    legal_action_mask: bool[num_actions]
    step_count: i32[]        agent steps taken in this episode
    """

    reward: jax.Array
    done: jax.Array
    legal_action_mask: jax.Array
    step_count: jax.Array


def base_fields(num_actions: int) -> dict[str, jax.Array]:
    """Initial values of the shared `State` fields."""
    return dict(
        reward=jnp.zeros((), jnp.float32),
        done=jnp.zeros((), jnp.bool_),
        legal_action_mask=jnp.ones((num_actions,), jnp.bool_),
        step_count=jnp.zeros((), jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class Env(abc.ABC):
    """Base class. Subclasses are frozen dataclasses whose fields are options;
    one that leaves out an abstract member below cannot be constructed."""

    illegal: str = "end"  # what an illegal action does: "end" | "random"
    illegal_penalty: float = -1.0  # reward for an illegal action

    name: ClassVar[str] = "env"

    def __post_init__(self):
        check_choice(self, "illegal", ILLEGAL_RULES)
        check_range(self, "illegal_penalty")

    # --- to implement -----------------------------------------------------
    @property
    @abc.abstractmethod
    def num_actions(self) -> int:
        """Size of the discrete action space."""

    @property
    @abc.abstractmethod
    def max_steps(self) -> int:
        """Agent steps after which an episode is truncated."""

    @abc.abstractmethod
    def _init(self, key: jax.Array) -> State:
        """A fresh episode's state (`init` returns it as it is)."""

    @abc.abstractmethod
    def _step(self, state: State, action: jax.Array, key: jax.Array) -> State:
        """The env's own transition for a legal action (`step` handles illegal
        actions, the penalty, truncation at max_steps and absorbing terminals)."""

    @property
    def fixed_legal_mask(self) -> bool:
        """True if every state's legal_action_mask equals init's (every action
        always legal, say); AutoReset then skips selecting it. The shared API
        test checks it on random play."""
        return False

    @property
    @abc.abstractmethod
    def reward_range(self) -> tuple[float, float]:
        """(lo, hi) bounding every reward `step` can return, the illegal
        penalty included; the shared API test checks it."""

    def expected_reward(self, state: State, action: jax.Array) -> jax.Array:
        """f32[]: the mean over the key of the reward `step(state, action, key)`
        gives, for envs whose reward is a noisy sample of a known mean (bandits);
        `shaping.expected_reward` trains on it. Others (`has_expected_reward`
        False) raise ValueError."""
        raise ValueError(f"env {self.name!r} has no expected_reward: its reward is not "
                         f"a noisy sample of a known mean")

    @property
    def has_expected_reward(self) -> bool:
        return type(self).expected_reward is not Env.expected_reward

    # --- text hooks (turned into token tables by envs/text.py) -------------
    @abc.abstractmethod
    def action_strings(self) -> tuple[str, ...]:
        """Text of each action as written after `ACTION=`: num_actions
        distinct, non-empty ASCII strings without whitespace."""

    @abc.abstractmethod
    def text_pieces(self) -> tuple[str, ...]:
        """The finite list of strings every render is concatenated from."""

    @property
    @abc.abstractmethod
    def max_render_pieces(self) -> int:
        """Upper bound on the number of pieces in one render."""

    @abc.abstractmethod
    def render_pieces(self, state: State) -> jax.Array:
        """i32[max_render_pieces] indices into `text_pieces`, -1 = empty slot
        (anywhere); their concatenation in order is the prompt. Jittable."""

    @abc.abstractmethod
    def render_text(self, state: State) -> str:
        """Host reference for one unbatched state, written independently of
        `render_pieces` (plain Python on numpy values); must equal it."""

    # --- shared semantics -------------------------------------------------
    def init(self, key: jax.Array) -> State:
        return self._init(key)

    def step(self, state: State, action: jax.Array, key: jax.Array) -> State:
        action = jnp.asarray(action, jnp.int32)
        in_range = (action >= 0) & (action < self.num_actions)
        legal = in_range & state.legal_action_mask[jnp.clip(action, 0, self.num_actions - 1)]
        key_step = key
        if self.illegal == "random":
            # Split only when the fallback needs its own key: random bits
            # dominate the cost of small envs on CPU.
            key_move, key_step = jax.random.split(key)
            logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
            fallback = jax.random.categorical(key_move, logits).astype(jnp.int32)
            action = jnp.where(legal, action, fallback)
        else:
            action = jnp.where(legal, action, 0)
        new = self._step(state, action, key_step)
        penalty = jnp.where(legal, 0.0, self.illegal_penalty).astype(jnp.float32)
        if self.illegal == "random":
            reward = new.reward + penalty
            done = new.done
        else:
            reward = jnp.where(legal, new.reward, penalty)
            done = new.done | ~legal
        step_count = state.step_count + 1
        done = done | (step_count >= self.max_steps)
        new = new.replace(reward=reward.astype(jnp.float32), done=done, step_count=step_count)
        # Absorbing terminal: a done state stays as it is, with reward 0.
        frozen = state.replace(reward=jnp.zeros_like(state.reward))
        return jax.tree.map(lambda a, b: jnp.where(state.done, a, b), frozen, new)


def reads_key(fn, *args) -> bool:
    """Whether `fn(*args)` uses its last argument (a key) at all, from one
    trace with abstract values. Conservative: any use in the jaxpr counts."""
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    key = jaxpr.invars[-1]
    return key in jaxpr.outvars or any(v is key for e in jaxpr.eqns for v in e.invars)


@dataclasses.dataclass(frozen=True)
class AutoReset:
    """Wraps an env for rollouts: an episode that ends is replaced at once.

    `step` returns a state whose `reward` and `done` describe the transition
    just taken (as gymnax does); when `done` is True the rest of the state is
    already a fresh `init(reset_key(key))` of the next episode. Its `done`
    flag is cleared on the next `step`, so the wrapped env never sees it as
    absorbing.

    Cost under vmap, where the reset is a select computed at every step:
      * keys: if only one of the env's step and init reads a key, it gets
        `key` itself (tic-tac-toe's init and arithmetic's step read none);
        otherwise each gets a key hashed from it (`envs.bits.derive_key`,
        the role of `fold_in` without its threefry calls, which took about
        a quarter of a bandit step). A split would run threefry for a key nobody
        reads, about a third of tic-tac-toe's step;
      * an env with `fixed_legal_mask` keeps its mask, as every state has
        the same one, instead of selecting num_actions bools per env and
        step (arithmetic: 9802).
    """

    env: Env

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    @functools.cached_property
    def _both_read_keys(self) -> bool:
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        state = jax.eval_shape(self.env.init, key)
        action = jax.ShapeDtypeStruct((), jnp.int32)
        return reads_key(self.env.init, key) and reads_key(self.env.step, state, action, key)

    def step_key(self, key: jax.Array) -> jax.Array:
        """The key `step(state, action, key)` passes to the env's step."""
        return derive_key(key, 0) if self._both_read_keys else key

    def reset_key(self, key: jax.Array) -> jax.Array:
        """The key of the fresh `init` that `step(..., key)` may return."""
        return derive_key(key, 1) if self._both_read_keys else key

    def init(self, key: jax.Array) -> State:
        return self.env.init(key)

    def step(self, state: State, action: jax.Array, key: jax.Array) -> State:
        state = state.replace(done=jnp.zeros_like(state.done))
        new = self.env.step(state, action, self.step_key(key))
        fresh = self.env.init(self.reset_key(key)).replace(reward=new.reward, done=new.done)
        if self.env.fixed_legal_mask:
            fresh = fresh.replace(legal_action_mask=new.legal_action_mask)
        return jax.tree.map(lambda a, b: jnp.where(new.done, a, b), fresh, new)


def digit_pieces(n: jax.Array, num_digits: int, zero_piece: int) -> jax.Array:
    """Pieces spelling the non-negative int `n` in decimal, for render_pieces.

    Returns i32[num_digits]: `zero_piece + d` for each digit d (pieces
    "0".."9" must sit at consecutive indices from `zero_piece`), with -1 for
    the leading zeros, so `str(n)` is spelled exactly (`n` < 10**num_digits).
    """
    pow10 = 10 ** jnp.arange(num_digits - 1, -1, -1, dtype=jnp.int32)
    n = jnp.asarray(n, jnp.int32)
    digit = (n // pow10) % 10
    keep = (n >= pow10) | (jnp.arange(num_digits) == num_digits - 1)
    return jnp.where(keep, zero_piece + digit, -1).astype(jnp.int32)


def check_choice(obj: Any, field: str, allowed) -> None:
    """Raise a clear ValueError if `obj.field` is not one of `allowed`."""
    value = getattr(obj, field)
    # True == 1 in Python: a bool is only allowed where the choices are bools.
    is_bool = isinstance(value, (bool, np.bool_))
    if value not in allowed or is_bool != any(isinstance(a, bool) for a in allowed):
        raise ValueError(
            f"{type(obj).__name__}.{field}={value!r} is not allowed; "
            f"choose one of {sorted(allowed) if not isinstance(allowed, range) else allowed}"
        )


def check_range(obj: Any, field: str, lo=None, hi=None) -> None:
    """Raise a clear ValueError if `obj.field` is outside [lo, hi], or is not
    an int where both bounds are ints (a number otherwise; never a bool)."""
    value = getattr(obj, field)
    bounds = [b for b in (lo, hi) if b is not None]
    integral = bool(bounds) and all(isinstance(b, (int, np.integer)) for b in bounds)
    kinds = (int, np.integer) if integral else (int, float, np.integer, np.floating)
    span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
        raise ValueError(f"{type(obj).__name__}.{field}={value!r} must be "
                         f"{'an int' if integral else 'a number'} in {span}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{type(obj).__name__}.{field}={value!r} must lie in {span}")


_REGISTRY: dict[str, type[Env]] = {}


def register(cls: type[Env]) -> type[Env]:
    """Class decorator: make an env available to `make(cls.name)`."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **options) -> Env:
    """Build a registered env. Unknown names or options raise a ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; available: {', '.join(registered())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for env {name!r}; allowed: {sorted(fields)}"
        )
    # a YAML or JSON list (`ships: [3, 2]`) is the tuple the env's fields hold
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
