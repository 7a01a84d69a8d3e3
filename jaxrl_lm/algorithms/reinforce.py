"""REINFORCE with returns-to-go over turns (RLFT's bandit setup, Schmied et al. 2025).

    G_t = r_t + gamma G_{t+1}                (per episode, over its turns)
    A_t = G_t - mean_b G_t                   (batch baseline at the same turn index)

Turn t's tokens get A_t. The per-turn baseline only lowers variance; with
group_size > 1 it is still the batch mean (groups need not share anything).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory


def advantages(algo, traj: Trajectory, values=None) -> Advantages:
    g_bt = adv_lib.returns_to_go(traj.reward.T, traj.done.T, gamma=algo.gamma)
    g_tb = g_bt.T
    act = traj.active.astype(jnp.float32)
    base_t = (g_tb * act).sum(1, keepdims=True) / jnp.maximum(act.sum(1, keepdims=True), 1.0)
    return Advantages((g_tb - base_t) * act, traj.active)


ALGORITHM = register(Algorithm("reinforce", "rl", advantages,
                               summary="returns-to-go over turns - batch mean (RLFT bandits)"))
