"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO
without the std division,

    A_i = R_i - mean_g R

every generated token of episode i getting A_i. Pair it with
`algo.loss_agg: seq-mean-token-sum-norm` (the paper's constant normaliser
instead of the length-biased per-sequence mean). The DAPO options of
algorithms/grpo.py (dynamic_sampling, clip_high) apply the same way.
"""

from __future__ import annotations

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.algorithms.grpo import signal_of
from jaxrl_lm.algorithms.registry import Algorithm, register
from jaxrl_lm.rollout import Trajectory, episode_returns


def advantages(algo, traj: Trajectory, values=None):
    return signal_of(algo, traj, adv_lib.dr_grpo_advantages(episode_returns(traj),
                                                            algo.group_size))


ALGORITHM = register(Algorithm("dr_grpo", "rl", advantages,
                               summary="R - mean_g R per episode (Dr. GRPO)"))
