"""PAPRIKA's curriculum statistics: which task groups teach the most.

A task is informative when its trajectories under the current policy score
differently (then it yields a pair with a real gap): its coefficient of
variation, sqrt(Var[score]) / |E[score]| over its n trajectories (0 when the
mean is 0 or every score is equal). Groups are arms of a UCB bandit whose
reward is the mean coefficient of variation of the tasks sampled from them;
`allocate` spends a round's generation budget (tasks) by UCB, one task at a
time, against `uniform`, the same budget spread evenly.

    state = ucb_init(num_groups)
    state = ucb_update(state, group, task_cv(scores))   # after each round
    tasks = allocate(state, budget=16, c=1.0)           # the next round's split
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def task_cv(scores: np.ndarray) -> float:
    """sqrt(Var) / |E| of one task's trajectory scores f[n] (population variance)."""
    s = np.asarray(scores, np.float64)
    mean = abs(float(s.mean()))
    return 0.0 if mean == 0.0 else float(s.std()) / mean


class UCBState(NamedTuple):
    counts: np.ndarray  # f64[K] observations of each group
    means: np.ndarray  # f64[K] running mean of each group's task cv


def ucb_init(num_groups: int) -> UCBState:
    return UCBState(np.zeros(num_groups), np.zeros(num_groups))


def ucb_update(state: UCBState, group: int, value: float) -> UCBState:
    """One more observation `value` (a task's cv) of `group`."""
    counts, means = state.counts.copy(), state.means.copy()
    counts[group] += 1
    means[group] += (value - means[group]) / counts[group]
    return UCBState(counts, means)


def ucb_scores(state: UCBState, c: float = 1.0) -> np.ndarray:
    """mean + c sqrt(2 ln N / n); +inf for a group never observed."""
    total = max(state.counts.sum(), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bonus = c * np.sqrt(2.0 * np.log(total) / state.counts)
    return np.where(state.counts > 0, state.means + bonus, np.inf)


def allocate(state: UCBState, budget: int, c: float = 1.0) -> np.ndarray:
    """Tasks per group i64[K] summing to `budget`: each task goes to the group
    of highest UCB score, counted as observed at its current mean (ties: the
    lower index)."""
    counts = state.counts.copy()
    out = np.zeros(len(counts), np.int64)
    for _ in range(budget):
        g = int(np.argmax(ucb_scores(UCBState(counts, state.means), c)))
        out[g] += 1
        counts[g] += 1
    return out


def uniform(num_groups: int, budget: int) -> np.ndarray:
    """The same budget spread evenly (the first groups get the remainder)."""
    out = np.full(num_groups, budget // num_groups, np.int64)
    out[: budget % num_groups] += 1
    return out
