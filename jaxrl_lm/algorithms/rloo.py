"""RLOO (Kool et al. 2019; Ahmadian et al. 2024): each episode's baseline is
the mean return of the other G - 1 episodes of its group,
A_i = R_i - mean_{j != i} R_j. Needs algo.group_size >= 2.
"""

from __future__ import annotations

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory, episode_returns


def advantages(algo, traj: Trajectory, values=None) -> Advantages:
    a_b = adv_lib.rloo_advantages(episode_returns(traj), algo.group_size)
    return Advantages(broadcast_episode(a_b, traj), traj.active)


def check(algo) -> None:
    if algo.group_size < 2:
        raise ValueError(f"algo.group_size={algo.group_size!r}: must be >= 2 for rloo "
                         f"(leave-one-out needs a peer)")


ALGORITHM = register(Algorithm("rloo", "rl", advantages, check=check,
                               summary="R - mean of the other G - 1 (RLOO)"))
