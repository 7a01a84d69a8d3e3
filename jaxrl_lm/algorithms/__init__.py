"""jaxrl_lm.algorithms: one small file per RL algorithm.

Each module has `advantages(algo: AlgoSection, traj: Trajectory, values=None)
-> common.Advantages`: how a rollout becomes a per-turn training signal. The
loss is shared (`common.make_loss`: clipped surrogate + optional KL + value),
configured by the same `algo` section. `jaxrl_lm.train.rl` runs them.

    name        advantage                                   paper
    grpo        (R - mean_g) / std_g, per episode           DeepSeekMath (+ DAPO, GSPO options)
    dr_grpo     R - mean_g                                  Dr. GRPO
    opo         R - sum(l R) / sum(l), one step per batch   OPO
    rloo        R - mean of the other G - 1                 RLOO
    reinforce   returns-to-go over turns - batch mean       RLFT (bandits)
    ppo         GAE over turns with a value head           PPO (RLFT tic-tac-toe)
"""

from jaxrl_lm.algorithms import common, grpo, opo, ppo, reinforce, rloo

ADVANTAGES = {"grpo": grpo.advantages, "dr_grpo": grpo.advantages, "opo": opo.advantages,
              "rloo": rloo.advantages, "reinforce": reinforce.advantages, "ppo": ppo.advantages}


def advantage_fn(name: str):
    """The `advantages` function of algorithm `name`."""
    if name not in ADVANTAGES:
        raise ValueError(f"algo.name={name!r}: RL algorithms are {', '.join(sorted(ADVANTAGES))}")
    return ADVANTAGES[name]


__all__ = ["ADVANTAGES", "advantage_fn", "common", "grpo", "opo", "ppo", "reinforce", "rloo"]
