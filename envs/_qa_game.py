"""The question-table game that guess_my_city, customer_service and
murder_mystery share: the table (`QATable`), the env over it (`QAGame`,
`QAState`) and its baselines (`info_gain`, `random`). Leading underscore: not
auto-imported as an env.

A hidden hypothesis (a table row) is drawn uniformly. Facts [0, n_given) are
shown from the start; each other fact is asked by one action and answered
with the row's table entry (one of a few values); the last actions give a
final answer. Asked facts and tried final answers become illegal.

Rewards: the right final answer gives +1 and ends the episode; a wrong one
gives 0 and ends it once `tries` are used; running out of `turns` ends it
with 0. The prompt shows the env's intro, the answers so far (`Known:`), the
facts not yet asked, the final answers tried (if `tries` > 1), the turns left
and the env's outro.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl_lm.envs import _puzzle_util as pu
from jaxrl_lm.envs.core import Env, State, check_range

DATA = pathlib.Path(__file__).parent / "data"


# --- the table, state and env -------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class QATable:
    """A finite world: H hypotheses, Q facts with scripted answers, G final answers.

    Facts [0, n_given) are shown in the first prompt; fact n_given + a is asked
    by action a (a < Q - n_given); action Q - n_given + g gives final answer g.
    """

    facts: tuple[str, ...]  # Q fact labels as the prompt shows them
    values: tuple[tuple[str, ...], ...]  # Q tuples of answer strings
    answers: np.ndarray  # i32[H, Q] index into values[q] of each hypothesis' answer
    ask: tuple[str, ...]  # Q - n_given action strings of the askable facts
    guesses: tuple[str, ...]  # G action strings of the final answers
    target: np.ndarray  # i32[H] the right final answer of each hypothesis

    def __post_init__(self):
        h, q = self.answers.shape
        if q != len(self.facts) or len(self.values) != q or self.target.shape != (h,):
            raise ValueError("QATable: facts, values, answers and target disagree in shape")
        if not (0 <= self.n_given <= q) or any(
                self.answers[:, j].max() >= len(self.values[j]) for j in range(q)):
            raise ValueError("QATable: an answer index lies outside its fact's values")

    @property
    def n_given(self) -> int:
        return len(self.facts) - len(self.ask)

    @property
    def offsets(self) -> np.ndarray:
        """i32[Q]: index of fact q's first value among all (fact, value) pairs."""
        return np.cumsum([0] + [len(v) for v in self.values[:-1]]).astype(np.int32)

    @functools.cached_property
    def one_hots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the info_gain player: f32 one-hots of each hypothesis' final answer
        [H, G], its answer to each askable fact [H, Qa * V] (V the most values of
        a fact) and its (answer, final answer) cell per askable fact [H, Qa * H]
        (at most H cells per fact, numbered densely)."""
        h, g = len(self.target), len(self.guesses)
        v = max(len(x) for x in self.values)
        asked = self.answers[:, self.n_given:]
        answer = np.zeros((h, asked.shape[1], v), np.float32)
        cell = np.zeros((h, asked.shape[1], h), np.float32)
        for q in range(asked.shape[1]):
            answer[np.arange(h), q, asked[:, q]] = 1
            pairs = asked[:, q] * g + self.target
            cell[np.arange(h), q, np.unique(pairs, return_inverse=True)[1]] = 1
        return np.eye(g, dtype=np.float32)[self.target], answer.reshape(h, -1), cell.reshape(h, -1)


@struct.dataclass
class QAState(State):
    hidden: jax.Array  # i32[] the hidden hypothesis (table row); fixed in an episode
    asked: jax.Array  # bool[Q] facts revealed so far (the given ones from the start)
    tried: jax.Array  # bool[G] final answers given so far
    won: jax.Array  # bool[] the right final answer was given


@dataclasses.dataclass(frozen=True)
class QAGame(Env):
    """Ask facts of a hidden row of a `table`, then give a final answer (module docstring)."""

    turns: int = 20  # questions and final answers together, 1..50
    tries: int = 1  # final answers allowed; the first right one wins, 1..G

    @property
    @abc.abstractmethod
    def table(self) -> QATable:
        """The world, built once per option set (cache it)."""

    @abc.abstractmethod
    def intro(self) -> str:
        """Rules shown at the top of every prompt."""

    @abc.abstractmethod
    def outro(self) -> str:
        """The answer format shown at the bottom."""

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "turns", 1, 50)
        check_range(self, "tries", 1, len(self.table.guesses))

    @property
    def num_actions(self) -> int:
        return len(self.table.ask) + len(self.table.guesses)

    @property
    def max_steps(self) -> int:
        return self.turns

    @property
    def reward_range(self) -> tuple[float, float]:
        return pu.reward_range(self, 0.0, 1.0)

    def _legal(self, asked: jax.Array, tried: jax.Array) -> jax.Array:
        return jnp.concatenate([~asked[self.table.n_given:], ~tried])

    def _init(self, key: jax.Array) -> QAState:
        t = self.table
        asked = jnp.arange(len(t.facts)) < t.n_given
        tried = jnp.zeros((len(t.guesses),), jnp.bool_)
        return QAState(
            reward=jnp.zeros((), jnp.float32), done=jnp.zeros((), jnp.bool_),
            legal_action_mask=self._legal(asked, tried), step_count=jnp.zeros((), jnp.int32),
            hidden=jax.random.randint(key, (), 0, len(t.target), jnp.int32),
            asked=asked, tried=tried, won=jnp.zeros((), jnp.bool_))

    def _step(self, state: QAState, action: jax.Array, key: jax.Array) -> QAState:
        del key
        t = self.table
        n_ask = len(t.ask)
        is_guess = action >= n_ask
        asked = state.asked | (~is_guess & (jnp.arange(len(t.facts)) == t.n_given + action))
        tried = state.tried | (is_guess & (jnp.arange(len(t.guesses)) == action - n_ask))
        won = is_guess & (action - n_ask == jnp.asarray(t.target)[state.hidden])
        done = won | (jnp.sum(tried) >= self.tries)
        return state.replace(reward=won.astype(jnp.float32), done=done,
                             legal_action_mask=self._legal(asked, tried),
                             asked=asked, tried=tried, won=won)

    # --- text hooks -----------------------------------------------------------
    def action_strings(self) -> tuple[str, ...]:
        return self.table.ask + self.table.guesses

    _FIXED: ClassVar[tuple[str, ...]] = ("\nNot asked:", "\nTurns left: ", "\nTried:")

    def text_pieces(self) -> tuple[str, ...]:
        t = self.table
        pairs = tuple(f" {f}={v}" for f, vals in zip(t.facts, t.values) for v in vals)
        tried = tuple(f" {g}" for g in t.guesses) if self.tries > 1 else ()
        return ((self.intro() + "\nKnown:", self.outro()) + self._FIXED
                + tuple(str(i) for i in range(self.turns + 1)) + pairs
                + tuple(f" {f}" for f in t.facts[t.n_given:]) + tried)

    @property
    def max_render_pieces(self) -> int:
        t = self.table
        return 5 + len(t.facts) + len(t.ask) + (1 + len(t.guesses) if self.tries > 1 else 0)

    def render_pieces(self, state: QAState) -> jax.Array:
        t = self.table
        num0 = 2 + len(self._FIXED)  # piece id of "0"
        pair0 = num0 + self.turns + 1
        ask0 = pair0 + sum(len(v) for v in t.values)
        answer = jnp.asarray(t.answers)[state.hidden]
        known = jnp.where(state.asked, pair0 + jnp.asarray(t.offsets) + answer, -1)
        unasked = jnp.where(state.asked[t.n_given:], -1, ask0 + jnp.arange(len(t.ask)))
        tried = []
        if self.tries > 1:
            ids = ask0 + len(t.ask) + jnp.arange(len(t.guesses))
            tried = [jnp.array([4]), jnp.where(state.tried, ids, -1)]
        left = num0 + jnp.clip(self.turns - state.step_count, 0, self.turns)
        return jnp.concatenate([jnp.array([0]), known, jnp.array([2]), unasked, *tried,
                                jnp.array([3]), left[None], jnp.array([1])]).astype(jnp.int32)

    def render_text(self, state: QAState) -> str:
        t = self.table
        row, asked = t.answers[int(state.hidden)], np.asarray(state.asked)
        known = "".join(f" {f}={t.values[j][row[j]]}" for j, f in enumerate(t.facts) if asked[j])
        unasked = "".join(f" {f}" for j, f in enumerate(t.facts) if j >= t.n_given and not asked[j])
        tried = "".join(f" {g}" for g, x in zip(t.guesses, np.asarray(state.tried)) if x)
        left = min(max(self.turns - int(state.step_count), 0), self.turns)
        middle = f"\nTried:{tried}" if self.tries > 1 else ""
        return (f"{self.intro()}\nKnown:{known}\nNot asked:{unasked}{middle}"
                f"\nTurns left: {left}{self.outro()}")


# --- baselines shared by the question-table games -----------------------------
def consistent(env: QAGame, state: QAState) -> jax.Array:
    """bool[H]: hypotheses that agree with every answer so far and whose final
    answer was not tried already."""
    t = env.table
    answers = jnp.asarray(t.answers)
    differs = (answers != answers[state.hidden][None, :]).astype(jnp.float32)
    # A dot, not any(differs & asked): with the constant `asked` of a first
    # turn, XLA constant-folds that reduction over the batch, for ~30 s.
    clashes = differs @ state.asked.astype(jnp.float32)
    return (clashes == 0) & ~state.tried[jnp.asarray(t.target)]


def _xlogx(n: jax.Array) -> jax.Array:
    return n * jnp.log(jnp.maximum(n, 1.0))


def info_gain(env: QAGame, state: QAState, key: jax.Array) -> jax.Array:
    """Ask the unasked question with the most information about the right final
    answer (the candidates' mutual information, greedy); give the most likely
    final answer once it is determined, no question is informative, or on the
    last turn. Ties are broken at random."""
    t = env.table
    k_ask, k_guess = jax.random.split(key)
    target_hg, answer_hqv, cell_hqc = (jnp.asarray(a) for a in t.one_hots)
    n_ask = len(t.ask)
    cand = consistent(env, state).astype(jnp.float32)
    # Counts by one-hot products (matmuls): a segment_sum scatters, slowly on CPU.
    mass_g = cand @ target_hg
    mass_qv = (cand @ answer_hqv).reshape(n_ask, -1)
    mass_qc = (cand @ cell_hqc).reshape(n_ask, -1)  # by (answer, final answer) cell
    # n * I(T; A) = n H(T) - n H(T | A), from counts: n H(T | A) = sum_v
    # xlogx(n_v) - sum_cells xlogx(n_cell).
    n_h_t = _xlogx(cand.sum()) - _xlogx(mass_g).sum()
    gain_q = n_h_t - (_xlogx(mass_qv).sum(-1) - _xlogx(mass_qc).sum(-1))
    gain_q = jnp.where(state.asked[t.n_given:], -1.0, gain_q)
    ask = pu.argmax_random_tie(k_ask, gain_q)
    guess = n_ask + pu.argmax_random_tie(k_guess, jnp.where(state.tried, -1.0, mass_g))
    settled = jnp.sum(mass_g > 0) <= 1
    last_turn = env.turns - state.step_count <= 1
    return jnp.where(settled | last_turn | (jnp.max(gain_q) < 1e-2), guess, ask).astype(jnp.int32)


def random(env: QAGame, state: QAState, key: jax.Array) -> jax.Array:
    """A uniformly random legal action (question or final answer)."""
    return pu.random_legal(key, state.legal_action_mask)
