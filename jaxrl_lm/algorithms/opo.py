"""OPO (Hao et al. 2025): strictly on-policy, optimal reward baseline, no KL.

    b_g = sum_i l_i R_i / sum_i l_i,   A_i = R_i - b_g   (no std division)

l_i is the number of tokens episode i generated over all its turns (the
gradient-norm proxy of the paper). One optimizer step per rollout batch
(algo.epochs must be 1, `check` enforces it), so the ratio is exactly 1.
"""

from __future__ import annotations

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.common import Advantages, broadcast_episode, episode_lengths
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory, episode_returns


def advantages(algo, traj: Trajectory, values=None) -> Advantages:
    a_b = adv_lib.opo_advantages(episode_returns(traj), episode_lengths(traj), algo.group_size)
    return Advantages(broadcast_episode(a_b, traj), traj.active)


def check(algo) -> None:
    if algo.epochs != 1:
        raise ValueError(f"algo.epochs={algo.epochs!r}: must be 1 for opo (strictly "
                         f"on-policy: one update per batch)")


ALGORITHM = register(Algorithm("opo", "rl", advantages, check=check,
                               summary="R - sum(l R) / sum(l) per group, one step per batch (OPO)"))
