"""jaxrl_lm.data: datasets of text prompts (JSONL, Parquet, a saved `datasets`
folder), rendered through the tokenizer's chat template and tokenized once.

    rows = read_rows("math.jsonl")
    train, held_out = split_rows(rows, 0.1, seed=0)
    prompts = build_prompts(train, tokenizer, max_prompt_len=256, columns=("answer",))
"""

from jaxrl_lm.data.chat import PLAIN_TEMPLATE, conversation, render_chat
from jaxrl_lm.data.files import read_rows
from jaxrl_lm.data.prompts import (PromptSet, batch_rows, build_prompts, split_rows,
                                   train_eval_rows)

__all__ = ["PLAIN_TEMPLATE", "PromptSet", "batch_rows", "build_prompts", "conversation",
           "read_rows", "render_chat", "split_rows", "train_eval_rows"]
