"""Advantage estimators: GAE, Monte-Carlo returns, and the group baselines of
critic-free LM RL (GRPO, Dr. GRPO, OPO, RLOO), plus masked whitening.

Time-indexed inputs are `[..., T]` (time last, any leading batch dims).
Group estimators take a flat `[B]` batch of scalar rewards holding B / G
contiguous groups of `group_size` = G responses to the same prompt.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

GRPO_SCALES = ("group", "batch", "none")


def _check_time(name: str, *arrays: jax.Array) -> None:
    if arrays[0].ndim < 1:
        raise ValueError(f"{name}: need rank >= 1 ([..., T]), got a scalar")
    chex.assert_equal_shape(arrays)


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_value: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016), a reverse lax.scan.

        delta_t = r_t + gamma (1 - done_t) V_{t+1} - V_t
        A_t     = delta_t + gamma lam (1 - done_t) A_{t+1}
        returns = A + V

    `dones[..., t]` is True when the episode ends with step t, so nothing after
    t is bootstrapped into it; episodes may restart inside the window.
    V_{T} = `last_value` [...] (default 0: the window ends every episode).
    Returns `(advantages, returns)`, both `rewards.shape`.
    """
    _check_time("rewards", rewards, values, dones)
    if not 0 <= gamma <= 1 or not 0 <= lam <= 1:
        raise ValueError(f"gamma={gamma!r}, lam={lam!r}: both must be in [0, 1]")
    rewards = rewards.astype(jnp.result_type(rewards.dtype, values.dtype, jnp.float32))
    values = values.astype(rewards.dtype)
    if last_value is None:
        last_value = jnp.zeros(rewards.shape[:-1], rewards.dtype)
    chex.assert_shape(last_value, rewards.shape[:-1])
    next_values = jnp.concatenate([values[..., 1:], last_value[..., None].astype(rewards.dtype)], -1)
    cont = 1.0 - dones.astype(rewards.dtype)
    deltas = rewards + gamma * cont * next_values - values

    def step(acc, x):
        delta_t, cont_t = x
        acc = delta_t + gamma * lam * cont_t * acc
        return acc, acc

    to_t = lambda x: jnp.moveaxis(x, -1, 0)  # noqa: E731
    _, adv_t = jax.lax.scan(step, jnp.zeros_like(last_value, rewards.dtype),
                            (to_t(deltas), to_t(cont)), reverse=True)
    adv = jnp.moveaxis(adv_t, 0, -1)
    return adv, adv + values


def returns_to_go(rewards: jax.Array, dones: jax.Array, *, gamma: float = 1.0) -> jax.Array:
    """Discounted Monte-Carlo return G_t = r_t + gamma (1 - done_t) G_{t+1}, [..., T].

    The baseline-free target RLFT uses (Schmied et al. 2025, "LLMs are Greedy
    Agents"); equal to `gae(..., values=0, lam=1)[0]`.
    """
    _check_time("rewards", rewards, dones)
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma={gamma!r}: must be in [0, 1]")
    rewards = rewards.astype(jnp.result_type(rewards.dtype, jnp.float32))
    cont = 1.0 - dones.astype(rewards.dtype)

    def step(acc, x):
        r_t, c_t = x
        acc = r_t + gamma * c_t * acc
        return acc, acc

    to_t = lambda x: jnp.moveaxis(x, -1, 0)  # noqa: E731
    _, g_t = jax.lax.scan(step, jnp.zeros(rewards.shape[:-1], rewards.dtype),
                          (to_t(rewards), to_t(cont)), reverse=True)
    return jnp.moveaxis(g_t, 0, -1)


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """[B] -> [B / G, G] after checking the layout."""
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: must be a positive integer")
    if rewards.ndim != 1:
        raise ValueError(f"rewards: need rank 1 ([B]), got shape {rewards.shape}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"group_size={group_size} must divide the batch size {rewards.shape[0]}")
    return rewards.astype(jnp.result_type(rewards.dtype, jnp.float32)).reshape(-1, group_size)


def grpo_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    scale: str = "group",
    ddof: int = 1,
    eps: float = 1e-6,
) -> jax.Array:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g) / (std + eps).

    Args:
      rewards: [B] scalar rewards, contiguous groups of `group_size`.
      scale: "group": std of the response's group (GRPO); "batch": one std over
        the whole batch (Hu et al. 2025, REINFORCE++ / TRL scale_rewards="batch");
        "none": no division (then equal to `dr_grpo_advantages`).
      ddof: delta degrees of freedom of the std; the default 1 is the unbiased
        std (torch.std, as in TRL and DeepSeekMath); 0 is the population std.
      eps: added to the std, so a group with equal rewards gets A = 0.
    Returns [B].
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale={scale!r}: must be one of {', '.join(GRPO_SCALES)}")
    if int(ddof) != ddof or ddof < 0:
        raise ValueError(f"ddof={ddof!r}: must be a non-negative integer")
    if not eps >= 0:
        raise ValueError(f"eps={eps!r}: must be >= 0")
    r_gk = _groups(rewards, group_size)
    n = group_size if scale == "group" else rewards.shape[0]
    if scale != "none" and ddof >= n:
        raise ValueError(f"ddof={ddof} needs more than {ddof} samples per std, got {n} (scale={scale!r})")
    centred_gk = r_gk - r_gk.mean(-1, keepdims=True)
    if scale == "group":
        centred_gk = centred_gk / (jnp.std(r_gk, axis=-1, ddof=ddof, keepdims=True) + eps)
    elif scale == "batch":
        centred_gk = centred_gk / (jnp.std(r_gk, ddof=ddof) + eps)
    return centred_gk.reshape(-1)


def dr_grpo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean_g, no std division. [B] -> [B]."""
    r_gk = _groups(rewards, group_size)
    return (r_gk - r_gk.mean(-1, keepdims=True)).reshape(-1)


def opo_advantages(rewards: jax.Array, lengths: jax.Array, group_size: int) -> jax.Array:
    """OPO's optimal baseline (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline").

        b_g = sum_i l_i r_i / sum_i l_i,   A_i = r_i - b_g   (no std division)

    The length-weighted mean minimises the policy-gradient variance when the
    squared gradient norm of a sequence grows with its length l_i. A group of
    one gets b = r, hence A = 0: a single sample carries no relative signal.
    A group whose lengths are all 0 falls back to the plain mean.
    """
    r_gk = _groups(rewards, group_size)
    chex.assert_shape(lengths, rewards.shape)
    l_gk = lengths.astype(r_gk.dtype).reshape(r_gk.shape)
    total_g = l_gk.sum(-1, keepdims=True)
    weighted = (l_gk * r_gk).sum(-1, keepdims=True) / jnp.where(total_g == 0, 1.0, total_g)
    baseline = jnp.where(total_g == 0, r_gk.mean(-1, keepdims=True), weighted)
    return (r_gk - baseline).reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024).

        A_i = r_i - (sum_{j != i} r_j) / (G - 1) = G / (G - 1) (r_i - mean_g)

    Needs group_size >= 2. [B] -> [B].
    """
    if group_size < 2:
        raise ValueError(f"group_size={group_size!r}: RLOO needs at least 2 samples per group")
    r_gk = _groups(rewards, group_size)
    others_gk = (r_gk.sum(-1, keepdims=True) - r_gk) / (group_size - 1)
    return (r_gk - others_gk).reshape(-1)


def whiten(
    x: jax.Array,
    mask: jax.Array | None = None,
    *,
    shift_mean: bool = True,
    ddof: int = 0,
    eps: float = 1e-8,
) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the valid entries of `mask`.

    With `shift_mean=False` the mean is added back (scale only, as PPO-RLHF
    does for rewards). Masked entries come out 0. `ddof` as in `numpy.var`.
    """
    if int(ddof) != ddof or ddof < 0:
        raise ValueError(f"ddof={ddof!r}: must be a non-negative integer")
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    m = jnp.ones(x.shape, bool) if mask is None else mask.astype(bool)
    chex.assert_equal_shape([x, m])
    n = m.sum().astype(x.dtype)
    mean = jnp.where(m, x, 0.0).sum() / jnp.maximum(n, 1.0)
    var = jnp.where(m, jnp.square(x - mean), 0.0).sum() / jnp.maximum(n - ddof, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m, out, 0.0)
