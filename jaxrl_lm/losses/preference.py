"""Pairwise preference losses on sequence log-probs: DPO family, SimPO, RPO.

Inputs are per-pair summed log-probs [B] of the chosen (w) and rejected (l)
responses. With h = (log pi(w) - log pi_ref(w)) - (log pi(l) - log pi_ref(l))
(Rafailov et al. 2023, "Direct Preference Optimization"):

    sigmoid   -(1 - e) log sig(beta h) - e log sig(-beta h)        e: cDPO label smoothing
    robust    (-(1 - e) log sig(beta h) + e log sig(-beta h)) / (1 - 2e)
              (Chowdhury et al. 2024, "Provably Robust DPO")
    hinge     max(0, 1 - beta h)              (SLiC, Zhao et al. 2023)
    ipo       (h - 1 / (2 beta))^2            (Azar et al. 2023, "A General
              Theoretical Paradigm to Understand Learning from Human Preferences")

Giving `chosen_len` and `rejected_len` length-normalises each side first
(log pi / |y| for both policy and reference), the usual practice for IPO.
Implicit rewards in the metrics are beta * (log pi - log pi_ref) of the same
(possibly normalised) quantities. Every loss is a mean over pairs:
`return_sum=True` gives `((sum over pairs, B), metrics)`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_lm.losses.aggregate import finish

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def _check_dpo(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {', '.join(DPO_LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta={beta!r}: must be > 0")
    if loss_type in ("ipo", "hinge") and label_smoothing != 0:
        raise ValueError(f"label_smoothing={label_smoothing!r}: only loss_type sigmoid or robust use it; must be 0")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: must be in [0, 0.5)")


def _pair_metrics(reward_w: jax.Array, reward_l: jax.Array) -> dict[str, jax.Array]:
    reward_w, reward_l = jax.lax.stop_gradient(reward_w), jax.lax.stop_gradient(reward_l)
    return {
        "rewards_chosen": reward_w.mean(),
        "rewards_rejected": reward_l.mean(),
        "reward_margin": (reward_w - reward_l).mean(),
        "reward_accuracy": (reward_w > reward_l).astype(reward_w.dtype).mean(),
    }


def _smoothed_logsigmoid_loss(z: jax.Array, eps: float) -> jax.Array:
    return -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)


def dpo_per_pair(h: jax.Array, *, beta: float, loss_type: str, label_smoothing: float) -> jax.Array:
    """The per-pair DPO-family loss of the log-ratio difference h [B]."""
    z = beta * h
    if loss_type == "sigmoid":
        return _smoothed_logsigmoid_loss(z, label_smoothing)
    if loss_type == "robust":
        e = label_smoothing
        return (-(1.0 - e) * jax.nn.log_sigmoid(z) + e * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * e)
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - z)
    return jnp.square(h - 1.0 / (2.0 * beta))


def dpo_loss(
    chosen_logp: jax.Array,
    rejected_logp: jax.Array,
    ref_chosen_logp: jax.Array,
    ref_rejected_logp: jax.Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_len: jax.Array | None = None,
    rejected_len: jax.Array | None = None,
    return_sum: bool = False,
):
    """DPO-family loss, mean over the B pairs; see the module docstring.

    Lengths (token counts [B], clamped to >= 1) must be given together or not at all.
    Metrics: rewards_chosen, rewards_rejected, reward_margin, reward_accuracy.
    """
    _check_dpo(beta, loss_type, label_smoothing)
    if (chosen_len is None) != (rejected_len is None):
        raise ValueError("chosen_len, rejected_len: give both (length-normalise each side) or neither")
    chex.assert_rank([chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp], 1)
    chex.assert_equal_shape([chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp])
    ref_w = jax.lax.stop_gradient(ref_chosen_logp)
    ref_l = jax.lax.stop_gradient(ref_rejected_logp)
    w, l = chosen_logp, rejected_logp
    if chosen_len is not None:
        chex.assert_equal_shape([chosen_logp, chosen_len, rejected_len])
        n_w = jnp.maximum(chosen_len, 1).astype(w.dtype)
        n_l = jnp.maximum(rejected_len, 1).astype(w.dtype)
        w, ref_w, l, ref_l = w / n_w, ref_w / n_w, l / n_l, ref_l / n_l
    h = (w - ref_w) - (l - ref_l)
    per_pair = dpo_per_pair(h, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    metrics = _pair_metrics(beta * (w - ref_w), beta * (l - ref_l))
    return finish(per_pair.sum(), jnp.asarray(per_pair.shape[0], per_pair.dtype), metrics, return_sum)


def simpo_loss(
    chosen_logp: jax.Array,
    rejected_logp: jax.Array,
    chosen_len: jax.Array,
    rejected_len: jax.Array,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    return_sum: bool = False,
):
    """SimPO (Meng et al. 2024, "Simple Preference Optimization with a Reference-Free Reward").

        l = -log sig(beta log pi(w) / |w| - beta log pi(l) / |l| - gamma)

    (with label smoothing e as in the sigmoid DPO loss). `gamma` is the target
    reward margin in reward units (TRL's `simpo_gamma`). No reference model.
    """
    if not beta > 0:
        raise ValueError(f"beta={beta!r}: must be > 0")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: must be in [0, 0.5)")
    chex.assert_rank([chosen_logp, rejected_logp, chosen_len, rejected_len], 1)
    chex.assert_equal_shape([chosen_logp, rejected_logp, chosen_len, rejected_len])
    reward_w = beta * chosen_logp / jnp.maximum(chosen_len, 1).astype(chosen_logp.dtype)
    reward_l = beta * rejected_logp / jnp.maximum(rejected_len, 1).astype(chosen_logp.dtype)
    per_pair = _smoothed_logsigmoid_loss(reward_w - reward_l - gamma, label_smoothing)
    metrics = _pair_metrics(reward_w, reward_l)
    return finish(per_pair.sum(), jnp.asarray(per_pair.shape[0], per_pair.dtype), metrics, return_sum)


def rpo_loss(
    chosen_logp: jax.Array,
    rejected_logp: jax.Array,
    ref_chosen_logp: jax.Array,
    ref_rejected_logp: jax.Array,
    chosen_len: jax.Array,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    return_sum: bool = False,
):
    """RPO: DPO plus alpha times the length-normalised NLL of the chosen response.

        l = l_DPO(h) - alpha log pi(w) / |w|

    (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; the
    objective PAPRIKA trains with, Tajwar et al. 2025). Metrics: the DPO ones
    plus `nll` (mean length-normalised NLL of the chosen responses).
    """
    _check_dpo(beta, loss_type, label_smoothing)
    if not alpha >= 0:
        raise ValueError(f"alpha={alpha!r}: must be >= 0")
    chex.assert_rank(chosen_len, 1)
    chex.assert_equal_shape([chosen_logp, chosen_len])
    (dpo_sum, n), metrics = dpo_loss(
        chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp,
        beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, return_sum=True)
    nll_b = -chosen_logp / jnp.maximum(chosen_len, 1).astype(chosen_logp.dtype)
    metrics = dict(metrics, nll=jax.lax.stop_gradient(nll_b).mean())
    return finish(dpo_sum + alpha * nll_b.sum(), n, metrics, return_sum)
