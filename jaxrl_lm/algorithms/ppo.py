"""PPO (Schulman et al. 2017) with a value head and GAE over turns (RLFT's
tic-tac-toe setup).

The value V(s_t) is read from the value head at the last prompt token of turn
t, under the params that sampled the batch. With per-turn rewards r_t

    delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t)
    A_t = delta_t + gamma lam (1 - done_t) A_{t+1},   returns_t = A_t + V(s_t)

A is whitened over the active turns of the batch; the loss adds
vf_coef * 0.5 (V - returns)^2 (optionally clipped, algo.value_clip). The
model needs a value head (`needs_value`: the trainer builds one).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory


def advantages(algo, traj: Trajectory, values=None) -> Advantages:
    if values is None:
        raise ValueError("ppo needs per-turn values (algorithms.common.turn_values)")
    act = traj.active
    v = jnp.where(act, values, 0.0)
    a_bt, ret_bt = adv_lib.gae(traj.reward.T, v.T, traj.done.T | ~act.T, gamma=algo.gamma,
                               lam=algo.lam)
    a = adv_lib.whiten(a_bt.T, act)
    return Advantages(jnp.where(act, a, 0.0), act, ret_bt.T, v)


def check(algo) -> None:
    if algo.turn_weight:
        raise ValueError(f"algo.turn_weight={algo.turn_weight!r}: must be 0 for ppo (GAE "
                         f"already credits each turn)")


ALGORITHM = register(Algorithm("ppo", "rl", advantages, needs_value=True, check=check,
                               summary="GAE over turns with a value head (PPO)"))
