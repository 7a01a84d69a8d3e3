"""jaxrl_lm.metrics: decision-making metrics (coverage, regret, greediness,
frequency bias), text-diversity metrics (Self-BLEU, Rep-n), all jittable, and
the per-sample policy-gradient variance of group baselines (grad_variance)."""

from jaxrl_lm.metrics.decision import action_coverage, cumulative_regret, frequency_bias, greediness
from jaxrl_lm.metrics.grad_variance import (baseline_variances, group_variance, oracle_advantages,
                                            score_gram, trajectory_gram)
from jaxrl_lm.metrics.text import rep_n, self_bleu, sentence_bleu

__all__ = ["action_coverage", "baseline_variances", "cumulative_regret", "frequency_bias",
           "greediness", "group_variance", "oracle_advantages", "rep_n", "score_gram",
           "self_bleu", "sentence_bleu", "trajectory_gram"]
