"""Warm-up data for a prompt dataset: SFT on each row's worked completion
(`data.demo_column`, e.g. the `demo` column of jaxrl_lm.data.generate's
tasks), after the row's prompt exactly as the rollout renders it.

    data_fn = demo_data(task, tokenizer, column="demo", batch_size=32, max_len=96)
    batch = data_fn(step, key)   # {"tokens", "loss_mask"}: the completion + EOS scored

Every demo is tokenized once, here; a row whose prompt + demo + EOS is longer
than `max_len` is an error naming the row, never cut. The rows of step `s` are
`data.batch_rows(s, ...)`: each epoch a new seeded order, pure in the step, so
a resumed warm-up replays its data.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxrl_lm.data import batch_rows
from jaxrl_lm.models.tokenizer import encode


def demo_data(task: Any, tokenizer: Any, *, column: str, batch_size: int, max_len: int,
              seed: int = 0, shuffle: bool = True):
    """A `train_sft` data source over `task` (a PromptTask) and its `column`."""
    prompts = task.prompts
    if column not in prompts.columns:
        have = ", ".join(sorted(prompts.columns)) or "none"
        raise ValueError(f"data.demo_column={column!r}: the warm-up imitates this column, but "
                         f"the rows give it no such column (columns kept: {have})")
    eos = tokenizer.eos_token_id
    n = len(prompts)
    tokens = np.full((n, max_len), task.pad_id, np.int32)
    mask = np.zeros((n, max_len), np.float32)
    for i, demo in enumerate(prompts.columns[column]):
        if not isinstance(demo, str) or not demo:
            raise ValueError(f"data.demo_column={column!r}: row {int(prompts.source_rows[i])} "
                             f"holds {demo!r}, not a non-empty string")
        p = prompts.ids[i, : prompts.lengths[i]].tolist()
        c = encode(tokenizer, demo) + [eos]
        if len(p) + len(c) > max_len:
            raise ValueError(f"row {int(prompts.source_rows[i])}: prompt + {column} + EOS is "
                             f"{len(p) + len(c)} tokens, longer than a training row's "
                             f"{max_len} (train.max_len; an RL run's warm-up: "
                             f"env.max_prompt_len + rollout.max_new_tokens)")
        tokens[i, : len(p) + len(c)] = p + c
        mask[i, len(p): len(p) + len(c)] = 1.0

    def data_fn(step: int, key: jax.Array) -> dict:
        del key  # the rows are a function of the step (and the seed)
        rows = batch_rows(step, batch_size, n, seed=seed, shuffle=shuffle)
        return {"tokens": tokens[rows], "loss_mask": mask[rows]}

    return data_fn
