"""RLFT's bandit decision metrics in evaluation (jaxrl_lm/evaluation/bandit.py)
against hand-worked numbers and float64 numpy, and the baselines beside them."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import envs
from jaxrl_lm.evaluation import bandit as bandit_eval


def test_decision_metrics_hand_worked():
    # K=3, mu=(0.1, 0.5, 0.9). Episode 0: arms 0,0,1,0 with rewards 1,0,2,0.
    #  coverage 2/3; regret 0.8+0.8+0.4+0.8 = 2.8;
    #  step 0 not counted; step 1 arm 0 is best (and most frequent) -> greedy;
    #  step 2 arm 1 untried -> neither; step 3 arm 0: best is arm 1 (mean 2), arm 0 most
    #  pulled -> frequency bias. greediness 1/3, frequency bias 1/3.
    # Episode 1: arms 2,1,2 then a masked step; rewards 0.5,0.7,0.1.
    #  coverage 2/3; regret 0+0.4+0 = 0.4; step 1 arm 1 untried; step 2 arm 2: means
    #  (2: 0.5, 1: 0.7) -> not greedy, counts tie at 1 -> most frequent -> bias.
    #  greediness 0/2, frequency bias 1/2.
    actions = jnp.asarray([[0, 0, 1, 0], [2, 1, 2, 0]])
    rewards = jnp.asarray([[1.0, 0.0, 2.0, 0.0], [0.5, 0.7, 0.1, 9.0]])
    mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    mu = jnp.asarray([[0.1, 0.5, 0.9]] * 2)
    got = bandit_eval.decision_metrics(actions, rewards, mu, mask)
    want = {"coverage": 2 / 3, "regret": (2.8 + 0.4) / 2, "greediness": (1 / 3 + 0) / 2,
            "frequency_bias": (1 / 3 + 1 / 2) / 2}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    # the Trajectory view: [T, B] fields, arm means from the first turn's state
    traj = SimpleNamespace(action=actions.T, env_reward=rewards.T, active=mask.T,
                           states=SimpleNamespace(mu=jnp.broadcast_to(mu, (4, 2, 3))))
    assert bandit_eval.trajectory_metrics(traj) == pytest.approx(got)


def test_baselines_against_numpy():
    env = envs.make("bandit", k=4, horizon=12, context=2)
    actions, rewards, mu = map(np.asarray, bandit_eval.baseline_play(env, "ucb", 8, seed=3))
    assert actions.shape == rewards.shape == (8, 12) and mu.shape == (8, 4)
    # UCB pulls every untried arm first: full coverage after k pulls
    assert all(sorted(row[:4]) == [0, 1, 2, 3] for row in actions)
    m = bandit_eval.decision_metrics(jnp.asarray(actions), jnp.asarray(rewards), jnp.asarray(mu))
    assert m["coverage"] == 1.0
    mu64 = mu.astype(np.float64)
    regret = (mu64.max(1)[:, None] - np.take_along_axis(mu64, actions, 1)).sum(1).mean()
    assert m["regret"] == pytest.approx(regret, rel=1e-5)


def test_bandit_table_lists_policy_and_baselines():
    res = {m: 0.5 for m in bandit_eval.METRICS}
    res.update({f"{b}_{m}": 0.25 for b in bandit_eval.BASELINES for m in bandit_eval.METRICS})
    table = bandit_eval.bandit_table({"train env": res}, {"train env": res})
    assert [line.split()[2] for line in table.splitlines()[1:]] == ["before", "after", "ucb",
                                                                      "random"]
    assert bandit_eval.bandit_table({}, {"x": {"return": 1.0}}) == ""
