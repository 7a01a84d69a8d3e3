"""The `preference` section: options of the pairwise losses (algo.name dpo,
ipo, hinge, robust, simpo, rpo; `jaxrl_lm.algorithms.preference`).

The pairs themselves come from the `data` section (data.path, data.split,
data.eval_path / eval_fraction, data.prompt_column, data.system_prompt,
data.chat, data.on_overlong, data.shuffle); their length limit is
train.max_len. Which fields an algorithm reads, and which must stay unset
for it, is checked by the algorithm's own `check_config`.
"""

from __future__ import annotations

import dataclasses

from jaxrl_lm.config_checks import SECTION_OF, _at_least, _fail


@dataclasses.dataclass(frozen=True)
class PreferenceSection:
    # the implicit reward's scale: beta log(pi / pi_ref) (simpo: beta log(pi) / |y|,
    # about 2 in its paper); ipo's regulariser tau
    beta: float = 0.1
    # the assumed rate of flipped labels: cDPO (dpo, rpo, simpo) or robust DPO (robust)
    label_smoothing: float = 0.0
    gamma: float = 0.5  # simpo: the target reward margin (TRL's simpo_gamma)
    alpha: float = 1.0  # rpo: weight of the chosen response's length-normalised NLL
    # the frozen reference: "policy" (a copy of the starting params) or a local HF
    # folder with the same tokenizer; its log-probs are computed once, before training
    reference: str = "policy"
    # divide each response's log-probs by its scored tokens (dpo, ipo, hinge, robust);
    # None: for ipo only, as TRL does
    length_normalize: bool | None = None
    # also score every training pair at the end (summary.json "train"); costs one
    # forward pass over the training pairs
    eval_train: bool = False

    def __post_init__(self):
        _at_least(self, "beta", 0.0, strict=True)
        if not 0.0 <= self.label_smoothing < 0.5:
            _fail(self, "label_smoothing", "must lie in [0, 0.5)")
        _at_least(self, "gamma", 0.0)
        _at_least(self, "alpha", 0.0)
        if not self.reference.strip():
            _fail(self, "reference", "must be 'policy' or the path of a local HF folder")


# `_fail` names a section by this table (config_checks.py owns it)
SECTION_OF[PreferenceSection] = "preference"
