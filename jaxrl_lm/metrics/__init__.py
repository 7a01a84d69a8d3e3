"""jaxrl_lm.metrics: decision-making metrics (coverage, regret, greediness,
frequency bias) and text-diversity metrics (Self-BLEU, Rep-n), all jittable."""

from jaxrl_lm.metrics.decision import action_coverage, cumulative_regret, frequency_bias, greediness
from jaxrl_lm.metrics.text import rep_n, self_bleu, sentence_bleu

__all__ = ["action_coverage", "cumulative_regret", "frequency_bias", "greediness", "rep_n", "self_bleu",
           "sentence_bleu"]
