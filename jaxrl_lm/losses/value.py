"""The critic's squared error, with PPO's optional value clipping.

    l = (v - R)^2 / 2                                                clip=None
    l = max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2) / 2     clip=c

(Schulman et al. 2017; the clipped form as in OpenAI baselines' ppo2, which
writes the clipped value v_old + clip(v - v_old, -c, c): the same number in
exact arithmetic, but in floats it differs from v by an ulp for many tokens
that are not clipped at all. Clipping v itself leaves those exactly v.)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_lm.losses.aggregate import aggregate, check_agg_mode, finish, masked_mean


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip: float | None = None,
    agg: str = "token-mean",
    max_len: int | None = None,
    return_sum: bool = False,
):
    """Value loss [B, T] -> scalar (or `(loss_sum, denom)` with `return_sum`).

    Args:
      values: [B, T] current value predictions.
      old_values: [B, T] predictions at sampling time (no gradient), used by clip.
      returns: [B, T] regression targets (no gradient), e.g. from `gae`.
      mask: [B, T] valid positions.
      clip: c > 0 or None (no clipping).

    Metrics: vf_clip_frac (the fraction of valid tokens whose value the clip
    changed, v outside [v_old - c, v_old + c]), value_mean, return_mean.
    """
    if clip is not None and not clip > 0:
        raise ValueError(f"clip={clip!r}: must be > 0 or None")
    check_agg_mode(agg, max_len)
    chex.assert_rank([values, old_values, returns, mask], 2)
    chex.assert_equal_shape([values, old_values, returns, mask])
    m = mask.astype(bool)
    sg = jax.lax.stop_gradient
    v = jnp.where(m, values, 0.0)
    v_old = sg(jnp.where(m, old_values, 0.0))
    ret = sg(jnp.where(m, returns, 0.0))
    err = jnp.square(v - ret)
    clip_frac = jnp.zeros((), v.dtype)
    if clip is not None:
        v_clipped = jnp.clip(v, v_old - clip, v_old + clip)
        err_clipped = jnp.square(v_clipped - ret)
        clip_frac = masked_mean(sg(v_clipped != v).astype(v.dtype), m)
        err = jnp.maximum(err, err_clipped)
    loss_sum, denom = aggregate(0.5 * err, m, agg, max_len=max_len, return_sum=True)
    metrics = {
        "vf_clip_frac": clip_frac,
        "value_mean": masked_mean(sg(v), m),
        "return_mean": masked_mean(ret, m),
    }
    return finish(loss_sum, denom, metrics, return_sum)
