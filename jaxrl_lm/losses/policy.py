"""The clipped policy-gradient surrogate: PPO, DAPO clip-higher, dual clip, GSPO.

For each valid token (b, t) with ratio r and advantage A (Schulman et al.
2017, "Proximal Policy Optimization Algorithms"):

    l = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)

written as max(-r A, -clip(r) A). The min is what keeps the gradient of a
token whose advantage is negative while its ratio has risen above 1 + eps:
there the unclipped term is the smaller objective and stays active.

  * clip_high != clip_low is DAPO's clip-higher (Yu et al. 2025).
  * dual_clip = c > 1 bounds the loss of negative-advantage tokens by -c A
    (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"):
    l = min(l, -c A) where A < 0.

Ratios (`ratio_level`):
  * "token":     r_bt = exp(logp_bt - old_logp_bt).
  * "sequence":  GSPO (Zheng et al. 2025, "Group Sequence Policy
                 Optimization"): s_b = exp(mean_t (logp_bt - old_logp_bt)) over
                 the valid tokens, shared by every token of sequence b.
  * "sequence-token": GSPO-token, r_bt = sg[s_b] exp(logp_bt - sg[logp_bt]):
                 same value as s_b, but each token's gradient is s_b grad logp_bt,
                 so per-token advantages can be used.

The per-token losses are reduced with `aggregate` (`agg`, `max_len`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_lm.losses.aggregate import aggregate, check_agg_mode, finish, masked_max, masked_mean, safe_div

RATIO_LEVELS = ("token", "sequence", "sequence-token")


def _check_options(clip_low, clip_high, dual_clip, ratio_level):
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level={ratio_level!r}: must be one of {', '.join(RATIO_LEVELS)}")
    if not clip_low >= 0:
        raise ValueError(f"clip_low={clip_low!r}: must be >= 0")
    if clip_low >= 1:
        raise ValueError(f"clip_low={clip_low!r}: must be < 1 (the lower bound 1 - clip_low must be positive)")
    if clip_high is not None and not clip_high >= 0:
        raise ValueError(f"clip_high={clip_high!r}: must be >= 0 or None (= clip_low)")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip={dual_clip!r}: must be > 1 or None")


def policy_ratio(logp_bt: jax.Array, old_logp_bt: jax.Array, mask_bt: jax.Array,
                 ratio_level: str = "token") -> jax.Array:
    """The importance ratio [B, T] of the module docstring; inputs already zeroed where masked."""
    log_ratio_bt = logp_bt - old_logp_bt
    if ratio_level == "token":
        return jnp.exp(log_ratio_bt)
    m = mask_bt.astype(logp_bt.dtype)
    log_s_b = safe_div((log_ratio_bt * m).sum(-1), m.sum(-1))
    if ratio_level == "sequence":
        return jnp.broadcast_to(jnp.exp(log_s_b)[:, None], logp_bt.shape)
    sg = jax.lax.stop_gradient
    return jnp.exp(sg(log_s_b)[:, None] + logp_bt - sg(logp_bt))


def ppo_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    ratio_level: str = "token",
    agg: str = "token-mean",
    max_len: int | None = None,
    return_sum: bool = False,
):
    """Clipped surrogate loss (to minimise) and its metrics.

    Args:
      logp: [B, T] log-probs of the sampled tokens under the current policy.
      old_logp: [B, T] the same under the sampling policy (no gradient taken).
      advantages: [B, T] per token, or [B] per sequence (broadcast over T).
      mask: [B, T] bool/0-1, True on response tokens that carry loss.
      clip_low, clip_high: ratio clipped to [1 - clip_low, 1 + clip_high];
        clip_high=None means clip_high = clip_low.
      dual_clip: c > 1 or None.
      ratio_level: "token" | "sequence" (GSPO) | "sequence-token" (GSPO-token).
      agg, max_len: aggregation, see `jaxrl_lm.losses.aggregate`.
      return_sum: return `((loss_sum, denom), metrics)` for exact accumulation.

    Metrics (token means over the valid tokens): clip_frac_low (A < 0 and
    r < 1 - clip_low: gradient cut), clip_frac_high (A > 0 and r > 1 + clip_high),
    dual_clip_frac, approx_kl (k3 of the token log-ratio), ratio_mean, ratio_max.
    """
    _check_options(clip_low, clip_high, dual_clip, ratio_level)
    check_agg_mode(agg, max_len)
    chex.assert_rank([logp, old_logp, mask], 2)
    chex.assert_equal_shape([logp, old_logp, mask])
    if advantages.ndim == 1:
        chex.assert_equal(advantages.shape[0], logp.shape[0])
        advantages = jnp.broadcast_to(advantages[:, None], logp.shape)
    chex.assert_equal_shape([logp, advantages])
    clip_high = clip_low if clip_high is None else clip_high

    m = mask.astype(bool)
    # Zero the padding first so that garbage there gives finite values and zero gradient.
    logp = jnp.where(m, logp, 0.0)
    old_logp = jax.lax.stop_gradient(jnp.where(m, old_logp, 0.0))
    adv = jax.lax.stop_gradient(jnp.where(m, advantages, 0.0)).astype(logp.dtype)

    ratio = policy_ratio(logp, old_logp, m, ratio_level)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = jnp.maximum(-adv * ratio, -adv * clipped_ratio)
    dual_active = jnp.zeros_like(m)
    if dual_clip is not None:
        dual_bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss > dual_bound)
        loss = jnp.where(adv < 0, jnp.minimum(loss, dual_bound), loss)

    loss_sum, denom = aggregate(loss, m, agg, max_len=max_len, return_sum=True)
    sg_ratio = jax.lax.stop_gradient(ratio)
    log_ratio = jax.lax.stop_gradient(old_logp - logp)
    metrics = {
        "clip_frac_low": masked_mean(((adv < 0) & (sg_ratio < 1.0 - clip_low)).astype(logp.dtype), m),
        "clip_frac_high": masked_mean(((adv > 0) & (sg_ratio > 1.0 + clip_high)).astype(logp.dtype), m),
        "dual_clip_frac": masked_mean(jax.lax.stop_gradient(dual_active).astype(logp.dtype), m),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, m),
        "ratio_mean": masked_mean(sg_ratio, m),
        "ratio_max": masked_max(sg_ratio, m),
    }
    return finish(loss_sum, denom, metrics, return_sum)
