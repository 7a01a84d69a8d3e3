"""Preference algorithms: a loss on pairs (prompt, chosen, rejected), no rollout.

Each entry names a pairwise loss of `jaxrl_lm.losses.preference` on the
summed log-probs of the two responses' scored (assistant) tokens; the
trainer (`jaxrl_lm.train.preference`) computes those, and the frozen
reference's once before training when `needs_reference`. Options come from
the `preference` section:

    name     loss                                                   paper
    dpo      -log sig(beta h), cDPO with label_smoothing             DPO (Rafailov et al. 2023)
    ipo      (h - 1 / (2 beta))^2, length-normalised by default      IPO (Azar et al. 2023)
    hinge    max(0, 1 - beta h)                                     SLiC (Zhao et al. 2023)
    robust   DPO unbiased for flipped labels (label_smoothing)       rDPO (Chowdhury et al. 2024)
    simpo    -log sig(beta (lp_w/|w| - lp_l/|l|) - gamma), no ref    SimPO (Meng et al. 2024)
    rpo      dpo + alpha * NLL(w) / |w|                             RPO (Pang et al. 2024)

with h = (lp_w - ref_w) - (lp_l - ref_l). Every loss returns the sum over the
pairs and their count, so micro-batches accumulate to the full batch's mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from jaxrl_lm import losses
from jaxrl_lm.algorithms.registry import Algorithm, register


class PairLogps(NamedTuple):
    """Per-pair sums over each response's scored tokens, all f32[B]."""

    chosen: jax.Array  # log pi(w | x): the chosen response's summed token log-probs
    rejected: jax.Array  # log pi(l | x)
    chosen_len: jax.Array  # |w|: scored tokens of the chosen response
    rejected_len: jax.Array  # |l|
    ref_chosen: jax.Array | None = None  # log pi_ref(w | x); None when not needed (simpo)
    ref_rejected: jax.Array | None = None  # log pi_ref(l | x)


def normalises(pref: Any, loss_type: str) -> bool:
    """Whether the DPO-family loss divides each side by its length: the
    section's `length_normalize`, or by default for ipo only (TRL's practice)."""
    return loss_type == "ipo" if pref.length_normalize is None else pref.length_normalize


def _dpo_family(loss_type: str):
    def pair_loss(pref: Any, lp: PairLogps):
        lens = ({"chosen_len": lp.chosen_len, "rejected_len": lp.rejected_len}
                if normalises(pref, loss_type) else {})
        return losses.dpo_loss(lp.chosen, lp.rejected, lp.ref_chosen, lp.ref_rejected,
                               beta=pref.beta, loss_type=loss_type,
                               label_smoothing=pref.label_smoothing, return_sum=True, **lens)

    return pair_loss


def _simpo(pref: Any, lp: PairLogps):
    return losses.simpo_loss(lp.chosen, lp.rejected, lp.chosen_len, lp.rejected_len,
                             beta=pref.beta, gamma=pref.gamma,
                             label_smoothing=pref.label_smoothing, return_sum=True)


def _rpo(pref: Any, lp: PairLogps):
    return losses.rpo_loss(lp.chosen, lp.rejected, lp.ref_chosen, lp.ref_rejected,
                           lp.chosen_len, beta=pref.beta, alpha=pref.alpha,
                           label_smoothing=pref.label_smoothing, return_sum=True)


def check_algo(algo: Any) -> None:
    """The algo section's RL options do not apply; its beta is the RL KL
    coefficient, easily mistaken for DPO's."""
    if algo.beta != 0:
        raise ValueError(f"algo.beta={algo.beta!r}: must be 0 for algo.name={algo.name!r} "
                         f"(algo.beta is the RL KL coefficient; the preference loss's beta "
                         f"is preference.beta)")


# field of the preference section -> the algorithms that read it; a field set
# away from its default for any other algorithm is a mistake worth stopping
_ONLY_FOR = {
    "gamma": ("simpo",),
    "alpha": ("rpo",),
    "length_normalize": ("dpo", "ipo", "hinge", "robust"),
    "label_smoothing": ("dpo", "robust", "simpo", "rpo"),
    "reference": ("dpo", "ipo", "hinge", "robust", "rpo"),
}


def check_config(cfg: Any) -> None:
    """Rules across sections for every preference algorithm."""
    name = cfg.algo.name
    if cfg.data.path is None:
        raise ValueError(f"algo.name={name!r} trains on preference pairs: give data.path "
                         f"(JSONL, JSON, Parquet or a saved datasets folder with the columns "
                         f"prompt, chosen, rejected)")
    if cfg.warmup.steps:
        raise ValueError(f"warmup.steps={cfg.warmup.steps}: must be 0 for algo.name={name!r} "
                         f"(the warm-up belongs to RL runs)")
    if cfg.train.data != "sorting":
        raise ValueError(f"train.data={cfg.train.data!r}: an SFT data source; algo.name="
                         f"{name!r} reads its pairs from data.path (leave train.data unset)")
    if cfg.reward != type(cfg.reward)():
        raise ValueError(f"reward: grades sampled completions; algo.name={name!r} samples none "
                         f"(leave the reward section unset)")
    pref, default = cfg.preference, type(cfg.preference)()
    for field in dataclasses.fields(pref):
        users = _ONLY_FOR.get(field.name)
        value = getattr(pref, field.name)
        if users and name not in users and value != getattr(default, field.name):
            raise ValueError(f"preference.{field.name}={value!r}: algo.name={name!r} does not "
                             f"use it (it applies to {', '.join(users)} only); leave it unset")


def _entry(name: str, pair_loss, summary: str, *, reference: bool = True) -> Algorithm:
    return register(Algorithm(name, "preference", pair_loss=pair_loss, needs_reference=reference,
                              check=check_algo, check_config=check_config, summary=summary))


DPO = _entry("dpo", _dpo_family("sigmoid"),
             "-log sig(beta h) on preference pairs, cDPO label smoothing (DPO)")
IPO = _entry("ipo", _dpo_family("ipo"),
             "(h - 1/(2 beta))^2 on length-normalised log-ratios (IPO, Azar et al. 2023)")
HINGE = _entry("hinge", _dpo_family("hinge"), "max(0, 1 - beta h) on preference pairs (SLiC)")
ROBUST = _entry("robust", _dpo_family("robust"),
                "DPO unbiased under flipped labels, label_smoothing = flip rate (rDPO)")
SIMPO = _entry("simpo", _simpo,
               "-log sig(beta mean lp_w - beta mean lp_l - gamma), no reference (SimPO)",
               reference=False)
RPO = _entry("rpo", _rpo, "DPO + alpha * length-normalised NLL of the chosen (RPO; PAPRIKA)")
