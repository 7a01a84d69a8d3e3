"""The variance of a group policy gradient under different baselines, measured
from per-sample gradients.

For a group of G responses to one prompt, response i has reward r_i, score
s_i = grad_theta log pi(y_i | x) (summed over its tokens), and advantage
A_i = r_i - b (possibly divided by a std). Its gradient contribution is
g_i = A_i s_i, and the group's estimate is their mean. We report, per group,

    V_g = 1/(G-1) sum_i ||g_i - mean_j g_j||^2      (trace of the sample covariance)
    M_g = ||mean_j g_j||^2                           (squared norm of the estimate)

Both only need the Gram matrix K_ij = <s_i, s_j> of the group's scores, since
<g_i, g_j> = A_i A_j K_ij: per-sample gradients are computed once (jax.vmap of
jax.grad), reduced to K, and any number of baselines is scored on the same batch.

This measures OPO's claim (Hao et al. 2025) that its length-weighted baseline
lowers the gradient variance: `trajectory_gram` takes the scores of a
library rollout's episodes (`rollout.pack_turns` rows, summed over turns) and
`baseline_variances` scores GRPO, Dr. GRPO (the plain group mean), OPO
(`jaxrl_lm.advantages`) and an oracle OPO weighted by the measured ||s_i||^2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrl_lm import advantages as adv_lib
from jaxrl_lm.rollout import Trajectory, episode_returns, pack_turns
from jaxrl_lm.sampling import token_logprobs

BASELINES = ("grpo", "dr_grpo", "opo", "oracle")


def score_gram(logp_fn, params, samples, group_size: int) -> jax.Array:
    """K[g, i, j] = <grad logp_fn(params, x_i), grad logp_fn(params, x_j)> within each group.

    logp_fn(params, x) -> scalar log-prob of ONE sample x (a pytree of arrays);
    `samples` stacks B = num_groups * group_size samples on the leading axis,
    groups contiguous. Groups are processed one at a time (lax.map), so at most
    group_size gradients are held at once. Returns f32[B / G, G, G].
    """
    b = jax.tree.leaves(samples)[0].shape[0]
    if int(group_size) != group_size or group_size < 1 or b % group_size:
        raise ValueError(f"group_size={group_size!r}: must be a positive integer dividing "
                         f"the number of samples {b}")
    grads_of = jax.vmap(jax.grad(logp_fn), in_axes=(None, 0))

    def one_group(xs):
        leaves = jax.tree.leaves(grads_of(params, xs))
        return sum(jnp.einsum("ip,jp->ij", l.reshape(group_size, -1), l.reshape(group_size, -1),
                              precision=jax.lax.Precision.HIGHEST) for l in leaves)

    grouped = jax.tree.map(lambda x: x.reshape(b // group_size, group_size, *x.shape[1:]), samples)
    return jax.lax.map(one_group, grouped)


def group_variance(gram_gkk: jax.Array, advantages_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(V_g, M_g) of the module docstring for advantages [B]; both f32[B / G]."""
    n, g, _ = gram_gkk.shape
    if g < 2:
        raise ValueError(f"group size {g}: the variance needs at least 2 samples per group")
    a = advantages_b.reshape(n, g).astype(gram_gkk.dtype)
    inner = a[:, :, None] * a[:, None, :] * gram_gkk  # <g_i, g_j>
    sum_sq = jnp.trace(inner, axis1=1, axis2=2)  # sum_i ||g_i||^2
    total = inner.sum((1, 2))  # ||sum_i g_i||^2
    return (sum_sq - total / g) / (g - 1), total / g**2


def oracle_advantages(rewards_b: jax.Array, gram_gkk: jax.Array) -> jax.Array:
    """OPO's baseline with the measured ||s_i||^2 in place of the length l_i:
    b = sum_i ||s_i||^2 r_i / sum_i ||s_i||^2 (the minimiser of sum_i ||(r_i - b) s_i||^2)."""
    n, g, _ = gram_gkk.shape
    w = jnp.diagonal(gram_gkk, axis1=1, axis2=2)
    r = rewards_b.reshape(n, g).astype(w.dtype)
    base = (w * r).sum(-1, keepdims=True) / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)
    return (r - base).reshape(-1)


def trajectory_gram(model, traj: Trajectory, group_size: int, *, pad_id: int = 0,
                    temperature: float = 1.0) -> jax.Array:
    """score_gram of a rollout's episodes under `model`: s_i is the gradient (over
    the nnx.Param variables) of episode i's summed completion log-probs, taken
    over the same rows as the loss (`pack_turns`), at the sampling temperature.
    Groups are the rollout's (contiguous episodes). Returns f32[B / G, G, G]."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return _trajectory_gram(graphdef, params, rest, traj, int(group_size), int(pad_id),
                            float(temperature))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _trajectory_gram(graphdef, params, rest, traj, group_size, pad_id, temperature):
    rows = pack_turns(traj, pad_id)
    t, b = traj.active.shape
    # [T * B, L] rows, turn-major -> one sample per episode: [B, T, L]
    per_episode = tuple(x.reshape(t, b, -1).swapaxes(0, 1)
                        for x in (rows.tokens, rows.loss_mask, rows.positions))

    def logp_fn(p, sample):
        tokens, mask, positions = sample
        model = nnx.merge(graphdef, p, rest)
        return token_logprobs(model, tokens, mask, temperature=temperature,
                              positions_bt=positions).sum()

    return score_gram(logp_fn, params, per_episode, group_size)


def baseline_variances(gram_gkk: jax.Array, traj: Trajectory) -> dict[str, jax.Array]:
    """V_<name>, M_<name> f32[B / G] (group_variance) for each of BASELINES on the
    same episodes, with the rollout's (shaped) returns and generated lengths, plus
    per episode sq_norm = ||s_i||^2, length and reward, f32[B]."""
    g = gram_gkk.shape[1]
    rewards = episode_returns(traj)
    lengths = (traj.completion_len * traj.active).sum(0)
    adv = {"grpo": adv_lib.grpo_advantages(rewards, g),
           "dr_grpo": adv_lib.dr_grpo_advantages(rewards, g),
           "opo": adv_lib.opo_advantages(rewards, lengths, g),
           "oracle": oracle_advantages(rewards, gram_gkk)}
    out = {"sq_norm": jnp.diagonal(gram_gkk, axis1=1, axis2=2).reshape(-1),
           "length": lengths, "reward": rewards}
    for name in BASELINES:
        out[f"V_{name}"], out[f"M_{name}"] = group_variance(gram_gkk, adv[name])
    return out
