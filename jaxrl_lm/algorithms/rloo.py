"""RLOO (Kool et al. 2019; Ahmadian et al. 2024): each episode's baseline is
the mean return of the other G - 1 episodes of its group,
A_i = R_i - mean_{j != i} R_j. Needs algo.group_size >= 2.
"""

from __future__ import annotations

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode
from jaxrl_lm.config import AlgoSection
from jaxrl_lm.rollout import Trajectory, episode_returns


def advantages(algo: AlgoSection, traj: Trajectory, values=None) -> Advantages:
    a_b = adv_lib.rloo_advantages(episode_returns(traj), algo.group_size)
    return Advantages(broadcast_episode(a_b, traj), traj.active)
