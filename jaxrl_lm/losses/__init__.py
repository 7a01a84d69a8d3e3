"""jaxrl_lm.losses: pure-function losses for RL and preference fine-tuning.

Every loss takes arrays and keyword options and returns `(loss, metrics)`,
metrics being a dict of scalar arrays (no gradient).

Gradient-accumulation convention (the train step in `jaxrl_lm.train.engine`
relies on it): every loss accepts `return_sum: bool = False`. With True it
returns `((loss_sum, denom), metrics)` where

    loss == loss_sum / denom      (0 when denom == 0)

and both parts are sums over the sequences (or pairs) of the batch. So for
micro-batches i split along the batch axis

    sum_i loss_sum_i / sum_i denom_i == the full-batch loss,

exactly, for every aggregation mode: token-mean uses denom = number of valid
tokens; the seq-mean-* modes use denom = number of sequences with at least
one valid token (seq-mean-token-sum-norm also divides each sequence's sum by
the constant max_len inside loss_sum); preference losses use denom = number
of pairs. Metrics are micro-batch means and are averaged by the caller.
`aggregate(..., return_sum=True)` gives the same pair for any per-token
quantity, e.g. `kl_penalty` or `entropy`.
"""

from jaxrl_lm.losses.aggregate import AGG_MODES, aggregate, masked_mean
from jaxrl_lm.losses.kl import KL_KINDS, entropy, kl_penalty
from jaxrl_lm.losses.policy import RATIO_LEVELS, policy_ratio, ppo_policy_loss
from jaxrl_lm.losses.preference import DPO_LOSS_TYPES, dpo_loss, rpo_loss, simpo_loss
from jaxrl_lm.losses.value import value_loss

__all__ = [
    "AGG_MODES", "DPO_LOSS_TYPES", "KL_KINDS", "RATIO_LEVELS",
    "aggregate", "dpo_loss", "entropy", "kl_penalty", "masked_mean", "policy_ratio",
    "ppo_policy_loss", "rpo_loss", "simpo_loss", "value_loss",
]
