"""GRPO (Shao et al. 2024) with the DAPO and GSPO options.

The G episodes of a group play the same task; each episode's return R_i is
scored against its group:

    A_i = (R_i - mean_g R) / (std_g R + eps)       algo.scale: group | batch | none

and every generated token of every turn of episode i gets A_i (Dr. GRPO,
without the std, is its own entry: algorithms/dr_grpo.py). Options:
DAPO's clip-higher (algo.clip_high), token-mean aggregation, dynamic sampling
(algo.dynamic_sampling: groups whose returns are all equal carry no signal and
are masked out; we drop rather than resample, so the batch shape stays fixed),
the soft overlong penalty (shaping.overlong_cache, applied as reward shaping by
the trainer); GSPO's sequence-level ratio (algo.ratio_level: sequence | sequence-token).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory, episode_returns


def group_has_signal(returns_b, group_size: int):
    """bool[B]: the episode's group has at least two distinct returns."""
    r = returns_b.reshape(-1, group_size)
    spread = (r.max(-1) - r.min(-1)) > 1e-6
    return jnp.repeat(spread, group_size)


def signal_of(algo, traj: Trajectory, a_b) -> Advantages:
    """Episode advantages a_b [B] on every turn; with algo.dynamic_sampling the
    groups whose returns are all equal carry no loss."""
    keep = traj.active
    if algo.dynamic_sampling:
        keep = keep & group_has_signal(episode_returns(traj), algo.group_size)[None, :]
    return Advantages(broadcast_episode(a_b, traj), keep)


def advantages(algo, traj: Trajectory, values=None) -> Advantages:
    g = algo.group_size
    a_b = adv_lib.grpo_advantages(episode_returns(traj), g, scale=algo.scale,
                                  ddof=1 if g > 1 else 0)
    return signal_of(algo, traj, a_b)


ALGORITHM = register(Algorithm(
    "grpo", "rl", advantages,
    summary="(R - mean_g R) / std_g R per episode (DeepSeekMath; DAPO, GSPO options)"))
