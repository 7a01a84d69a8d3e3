"""Per-token KL estimators and the masked entropy of a categorical policy.

With d = ref_logp - logp on tokens sampled from the policy (Schulman 2020,
"Approximating KL Divergence"):

    k1 = -d                    unbiased, high variance, can be negative
    k2 = d^2 / 2               biased, low variance, >= 0
    k3 = exp(d) - d - 1        unbiased, low variance, >= 0  (GRPO's choice)

Each estimates KL(pi || pi_ref) per token. Use them in the loss
(`aggregate(kl_penalty(...), mask, mode)`), or subtract `beta * k1` from
per-token rewards (PPO-RLHF style, where the estimator should not carry a
gradient: stop it yourself).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(
    logp: jax.Array,
    ref_logp: jax.Array,
    kind: str = "k3",
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Per-token KL estimate of shape `logp.shape`; 0 where `mask` is False.

    Args:
      logp: log pi(a_t | s_t) of the sampled tokens, any shape.
      ref_logp: log pi_ref(a_t | s_t), same shape.
      kind: "k1", "k2" or "k3" (see module docstring).
      mask: optional bool/0-1 array; masked inputs are zeroed before the exp,
        so garbage padding gives a finite value and zero gradient.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {', '.join(KL_KINDS)}")
    chex.assert_equal_shape([logp, ref_logp])
    if mask is not None:
        chex.assert_equal_shape([logp, mask])
        m = mask.astype(bool)
        logp = jnp.where(m, logp, 0.0)
        ref_logp = jnp.where(m, ref_logp, 0.0)
    d = ref_logp - logp
    if kind == "k1":
        out = -d
    elif kind == "k2":
        out = 0.5 * jnp.square(d)
    else:
        out = jnp.expm1(d) - d
    return out if mask is None else jnp.where(mask.astype(bool), out, 0.0)


def entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Entropy H = -sum_v p_v log p_v of softmax(logits) over the last axis.

    `logits` [..., V] -> [...]; 0 where `mask` is False. Entries at -inf
    (e.g. after top-k filtering) have p = 0 and contribute 0, not NaN.
    """
    if logits.ndim < 1:
        raise ValueError(f"logits: need rank >= 1 ([..., V]), got shape {logits.shape}")
    logits = logits.astype(jnp.float32)
    if mask is not None:
        chex.assert_equal_shape([logits[..., 0], mask])
        # A fully -inf padded row would make log_softmax NaN in the backward pass.
        logits = jnp.where(mask.astype(bool)[..., None], logits, 0.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    # 0 * -inf is NaN; p == 0 terms contribute nothing to the entropy.
    h = -jnp.where(p > 0, p * jnp.where(p > 0, logp, 0.0), 0.0).sum(-1)
    if mask is not None:
        h = jnp.where(mask.astype(bool), h, 0.0)
    return h
