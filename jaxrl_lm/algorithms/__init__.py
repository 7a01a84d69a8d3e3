"""jaxrl_lm.algorithms: one small file per algorithm, found through a registry.

Each RL file has `advantages(algo, traj: Trajectory, values=None) ->
common.Advantages` (how a rollout becomes a per-turn training signal) and
registers an `Algorithm` (its name, that function, whether it needs a value
head, its own config checks). The loss is shared (`common.make_loss`: clipped
surrogate + optional KL + value), configured by the `algo` section.
`jaxrl_lm.train.rl` runs them.

    name        advantage                                   paper
    grpo        (R - mean_g) / std_g, per episode           DeepSeekMath (+ DAPO, GSPO options)
    dr_grpo     R - mean_g                                  Dr. GRPO
    opo         R - sum(l R) / sum(l), one step per batch   OPO
    rloo        R - mean of the other G - 1                 RLOO
    reinforce   returns-to-go over turns - batch mean       RLFT (bandits)
    ppo         GAE over turns with a value head            PPO (RLFT tic-tac-toe)
    sft         (no rollout) completion-only cross-entropy
    dpo, ipo, hinge, robust, simpo, rpo
                (no rollout) pairwise losses on (prompt, chosen, rejected)
                (preference.py; DPO, IPO, SLiC, rDPO, SimPO, RPO)

A new algorithm is a new file here that calls `register`, plus its import below.
"""

from jaxrl_lm.algorithms import common  # noqa: F401
from jaxrl_lm.algorithms import sft, grpo, dr_grpo, opo, rloo, reinforce, ppo  # noqa: F401
from jaxrl_lm.algorithms import preference  # noqa: F401
from jaxrl_lm.algorithms.registry import Algorithm, get, names, register


def advantage_fn(name: str):
    """The `advantages` function of RL algorithm `name`."""
    alg = get(name)
    if alg.advantages is None:
        raise ValueError(f"algo.name={name!r} is not an RL algorithm; RL algorithms are "
                         f"{', '.join(n for n in names() if get(n).kind == 'rl')}")
    return alg.advantages


__all__ = ["Algorithm", "advantage_fn", "common", "get", "names", "register"]
