"""Supervised fine-tuning: completion-only cross-entropy on a data source
(`train.data`), no rollout. The loss and the data live in jaxrl_lm/train/sft.py;
this entry only names it for `algo.name`.
"""

from jaxrl_lm.algorithms.registry import Algorithm, register

ALGORITHM = register(Algorithm("sft", "sft",
                               summary="completion-only cross-entropy on train.data"))
