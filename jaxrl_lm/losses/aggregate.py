"""Reduce a per-token loss `[B, T]` to a scalar, exactly, under any micro-batching.

Every mode is written as `loss = loss_sum / denom` where both parts are sums
over sequences, so splitting the batch along B into micro-batches and summing
the parts gives the full-batch value bit-for-bit up to float addition order:

    mode                      loss_sum                          denom
    token-mean                sum_{b,t} m l                     sum_{b,t} m      (valid tokens)
    seq-mean-token-mean       sum_b (sum_t m l / sum_t m)       #{b: sum_t m > 0}
    seq-mean-token-sum        sum_b sum_t m l                   #{b: sum_t m > 0}
    seq-mean-token-sum-norm   sum_b sum_t m l / max_len         #{b: sum_t m > 0}

Sequence modes average over sequences with at least one valid token, so a
fully padded row neither contributes nor dilutes. `seq-mean-token-sum-norm`
is Dr. GRPO's constant normaliser (Liu et al. 2025, "Understanding R1-Zero-Like
Training"): dividing by a fixed `max_len` instead of each response's length
removes the bias towards long wrong answers; `max_len` defaults to T.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def check_agg_mode(mode: str, max_len: int | None = None) -> None:
    """ValueError for an unknown mode or a non-positive `max_len`."""
    if mode not in AGG_MODES:
        raise ValueError(f"agg={mode!r}: must be one of {', '.join(AGG_MODES)}")
    if max_len is not None and (int(max_len) != max_len or max_len <= 0):
        raise ValueError(f"max_len={max_len!r}: must be a positive integer or None")


def safe_div(num: jax.Array, denom: jax.Array) -> jax.Array:
    """num / denom, 0 where denom == 0 (an empty batch has loss 0, not NaN)."""
    return num / jnp.where(denom == 0, 1.0, denom)


def aggregate(
    per_token: jax.Array,
    mask: jax.Array,
    mode: str = "token-mean",
    *,
    max_len: int | None = None,
    return_sum: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Reduce `per_token` [B, T] over the valid tokens of `mask` [B, T].

    Returns the scalar `loss_sum / denom` (0 when denom is 0) or, with
    `return_sum=True`, the pair `(loss_sum, denom)` of the table above.
    Masked entries are replaced by 0 before any arithmetic, so NaN or inf
    padding never leaks into the value or the gradient.
    """
    check_agg_mode(mode, max_len)
    chex.assert_rank([per_token, mask], 2)
    chex.assert_equal_shape([per_token, mask])
    m = mask.astype(per_token.dtype)
    x = jnp.where(mask.astype(bool), per_token, 0.0)
    tok_count_b = m.sum(-1)
    if mode == "token-mean":
        loss_sum, denom = x.sum(), tok_count_b.sum()
    else:
        row_sum_b = x.sum(-1)
        if mode == "seq-mean-token-mean":
            row_sum_b = safe_div(row_sum_b, tok_count_b)
        elif mode == "seq-mean-token-sum-norm":
            row_sum_b = row_sum_b / float(max_len if max_len is not None else per_token.shape[-1])
        loss_sum = row_sum_b.sum()
        denom = (tok_count_b > 0).astype(per_token.dtype).sum()
    if return_sum:
        return loss_sum, denom
    return safe_div(loss_sum, denom)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over `mask` (0 when the mask is empty); used for metrics."""
    m = mask.astype(bool)
    return safe_div(jnp.where(m, x, 0.0).sum(), m.sum().astype(x.dtype))


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Max of `x` over `mask`; 0 when the mask is empty (keeps logged metrics finite)."""
    m = mask.astype(bool)
    return jnp.where(m.any(), jnp.where(m, x, -jnp.inf).max(), 0.0)


def finish(loss_sum: jax.Array, denom: jax.Array, metrics: dict, return_sum: bool):
    """The shared return convention of every loss: `(loss, metrics)` or `((sum, denom), metrics)`."""
    if return_sum:
        return (loss_sum, denom), metrics
    return safe_div(loss_sum, denom), metrics
