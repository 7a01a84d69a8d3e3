"""GRPO (Shao et al. 2024) with the DAPO, Dr. GRPO and GSPO options.

The G episodes of a group play the same task; each episode's return R_i is
scored against its group:

    grpo      A_i = (R_i - mean_g R) / (std_g R + eps)       algo.scale: group | batch | none
    dr_grpo   A_i =  R_i - mean_g R                          (Liu et al. 2025; pair it with
                                                              loss_agg: seq-mean-token-sum-norm)

and every generated token of every turn of episode i gets A_i. Options:
DAPO's clip-higher (algo.clip_high), token-mean aggregation, dynamic sampling
(algo.dynamic_sampling: groups whose returns are all equal carry no signal and
are masked out; we drop rather than resample, so the batch shape stays fixed),
the soft overlong penalty (algo.overlong_cache, applied as reward shaping by the
trainer); GSPO's sequence-level ratio (algo.ratio_level: sequence | sequence-token).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode
from jaxrl_lm.config import AlgoSection
from jaxrl_lm.rollout import Trajectory, episode_returns


def group_has_signal(returns_b, group_size: int):
    """bool[B]: the episode's group has at least two distinct returns."""
    r = returns_b.reshape(-1, group_size)
    spread = (r.max(-1) - r.min(-1)) > 1e-6
    return jnp.repeat(spread, group_size)


def advantages(algo: AlgoSection, traj: Trajectory, values=None) -> Advantages:
    r_b = episode_returns(traj)
    g = algo.group_size
    if algo.name == "dr_grpo":
        a_b = adv_lib.dr_grpo_advantages(r_b, g)
    else:
        a_b = adv_lib.grpo_advantages(r_b, g, scale=algo.scale, ddof=1 if g > 1 else 0)
    keep = traj.active
    if algo.dynamic_sampling:
        keep = keep & group_has_signal(r_b, g)[None, :]
    return Advantages(broadcast_episode(a_b, traj), keep)
