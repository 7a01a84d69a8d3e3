"""Scalar metrics of a rollout, shared by training logs and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_lm.rollout import Trajectory, episode_returns, prompt_cuts, turn_faults


def episode_stats(traj: Trajectory) -> dict[str, jax.Array]:
    """Scalar rollout metrics (means over episodes or active turns)."""
    act = traj.active.astype(jnp.float32)
    turns = act.sum()
    env_ret = (traj.env_reward * act).sum(0)
    legal = traj.states.legal_action_mask
    in_range = (traj.action >= 0) & (traj.action < legal.shape[-1])
    invalid, illegal = turn_faults(traj)
    # distinct actions the policy itself chose in an episode, over the action
    # space (RLFT's action coverage for bandits; stand-ins for invalid answers
    # do not count)
    chose = traj.active & traj.valid & in_range
    num_actions = legal.shape[-1]
    played_ba = (jax.nn.one_hot(traj.action, num_actions, dtype=jnp.bool_)
                 & chose[..., None]).any(0)
    return {
        "reward": episode_returns(traj).mean(),
        "env_return": env_ret.mean(),
        "win_rate": (env_ret > 0).mean(),
        "draw_rate": (env_ret == 0).mean(),
        "loss_rate": (env_ret < 0).mean(),
        "invalid_rate": invalid.sum() / jnp.maximum(turns, 1.0),
        "illegal_rate": illegal.sum() / jnp.maximum(turns, 1.0),
        "turns": act.sum(0).mean(),
        "completion_len": (traj.completion_len * act).sum() / jnp.maximum(turns, 1.0),
        "action_coverage": played_ba.sum(-1).mean() / num_actions,
        # prompts longer than env.max_prompt_len (the trainer stops on any)
        "prompt_cut": prompt_cuts(traj)[0],
        "prompt_len_max": prompt_cuts(traj)[1],
    }
