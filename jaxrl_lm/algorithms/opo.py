"""OPO (Hao et al. 2025): strictly on-policy, optimal reward baseline, no KL.

    b_g = sum_i l_i R_i / sum_i l_i,   A_i = R_i - b_g   (no std division)

l_i is the number of tokens episode i generated over all its turns (the
gradient-norm proxy of the paper). One optimizer step per rollout batch
(algo.epochs must be 1, the config enforces it), so the ratio is exactly 1.
"""

from __future__ import annotations

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode, episode_lengths
from jaxrl_lm.config import AlgoSection
from jaxrl_lm.rollout import Trajectory, episode_returns


def advantages(algo: AlgoSection, traj: Trajectory, values=None) -> Advantages:
    a_b = adv_lib.opo_advantages(episode_returns(traj), episode_lengths(traj), algo.group_size)
    return Advantages(broadcast_episode(a_b, traj), traj.active)
