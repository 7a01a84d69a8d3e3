"""RLFT's decision-making metrics for bandit evaluations, next to baselines.

`bandit_report(env, traj)` turns an evaluation rollout on envs.bandit into
flat floats: `coverage` (fraction of arms tried by the end of the episode),
`regret` (cumulative pseudo-regret sum_t mu* - mu_{a_t} at the end),
`greediness` and `frequency_bias` (jaxrl_lm.metrics.decision), means over
episodes; and the same four for UCB and random play (`ucb_coverage`, ...,
`random_frequency_bias`) on as many fresh episodes of the same env.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrl_lm.metrics import decision

METRICS = ("coverage", "regret", "greediness", "frequency_bias")
BASELINES = ("ucb", "random")


def decision_metrics(actions: jax.Array, rewards: jax.Array, arm_means: jax.Array,
                     mask: jax.Array | None = None) -> dict[str, float]:
    """Episode-mean metrics of actions/rewards/mask [B, T] and arm_means [B, K]."""
    k = arm_means.shape[-1]
    out = {
        "coverage": decision.action_coverage(actions, k, mask=mask)[..., -1],
        "regret": decision.cumulative_regret(actions, arm_means, mask=mask)[..., -1],
        "greediness": decision.greediness(actions, rewards, k, mask=mask),
        "frequency_bias": decision.frequency_bias(actions, rewards, k, mask=mask),
    }
    return {name: float(jnp.mean(v)) for name, v in out.items()}


def trajectory_metrics(traj: Any) -> dict[str, float]:
    """`decision_metrics` of a rollout Trajectory ([T, B] fields) on envs.bandit."""
    return decision_metrics(traj.action.T, traj.env_reward.T, traj.states.mu[0], traj.active.T)


def baseline_play(env: Any, policy: str, episodes: int, seed: int = 0):
    """(actions, rewards, arm_means) of `episodes` episodes of a baseline from
    envs.bandit.BASELINES: [B, T], [B, T], [B, K]."""
    from jaxrl_lm.envs import bandit

    act_fn = bandit.BASELINES[policy]

    def episode(key):
        k_init, k_run = jax.random.split(key)
        s0 = env.init(k_init)

        def turn(state, key):
            k_act, k_env = jax.random.split(key)
            a = act_fn(env, state, k_act)
            nxt = env.step(state, a, k_env)
            return nxt, (a, nxt.reward)

        _, (actions, rewards) = jax.lax.scan(turn, s0, jax.random.split(k_run, env.horizon))
        return actions, rewards, s0.mu

    keys = jax.random.split(jax.random.key(seed), episodes)
    return jax.jit(jax.vmap(episode))(keys)


def bandit_report(env: Any, traj: Any, *, episodes: int, seed: int = 0) -> dict[str, float]:
    """The policy's metrics plus each baseline's, prefixed by its name."""
    out = trajectory_metrics(traj)
    for name in BASELINES:
        actions, rewards, mu = baseline_play(env, name, episodes, seed)
        out.update({f"{name}_{k}": v for k, v in decision_metrics(actions, rewards, mu).items()})
    return out


def bandit_table(before: dict, after: dict) -> str:
    """Rows: each target's before/after policy metrics, then the baselines."""
    lines = [f"{'target':<14}{'policy':<10}" + "".join(f"{c:>16}" for c in METRICS)]
    for label, res in after.items():
        if "coverage" not in res:
            continue
        rows = [("before", before.get(label)), ("after", res)]
        rows += [(b, {m: res[f"{b}_{m}"] for m in METRICS}) for b in BASELINES]
        for name, r in rows:
            if r is not None:
                lines.append(f"{label:<14}{name:<10}" + "".join(f"{r[c]:>16.3f}" for c in METRICS))
    return "\n".join(lines) if len(lines) > 1 else ""
