"""A prompt dataset tokenized once, before anything compiles.

    rows = read_rows("math.jsonl")
    prompts = build_prompts(rows, tokenizer, max_prompt_len=256, columns=("answer",))
    prompts.ids        # i32[N, P] right-padded with the pad id
    prompts.lengths    # i32[N]
    prompts.columns    # {"answer": [...]}: passed on to the rewards, row by row
    idx = batch_rows(step, 8, len(prompts), seed=0)   # the rows of training step `step`

A prompt longer than `max_prompt_len` is never cut: `on_overlong="error"`
stops with the row and its length, `"drop"` leaves the row out and counts it
(`prompts.dropped`, reported by the trainer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxrl_lm.data.chat import conversation, render_chat
from jaxrl_lm.data.files import read_rows
from jaxrl_lm.models.tokenizer import encode, pad_id

OVERLONG = ("error", "drop")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    ids: np.ndarray  # i32[N, P] prompt token ids, pad id after `lengths`
    lengths: np.ndarray  # i32[N] tokens of each prompt
    texts: tuple[str, ...]  # the rendered prompt strings (chat template applied)
    columns: dict[str, list]  # column -> one value per kept row (answers, metadata)
    source_rows: np.ndarray  # i32[N] index of each kept row in the rows given
    dropped: int  # rows left out for being longer than max_prompt_len

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def build_prompts(rows: Sequence[dict[str, Any]], tokenizer: Any, *, max_prompt_len: int,
                  prompt_column: str = "prompt", columns: Sequence[str] = (),
                  system_prompt: str | None = None, chat: bool = True,
                  on_overlong: str = "error") -> PromptSet:
    """Tokenize every row's prompt (through the chat template when `chat`; a
    plain-text prompt is then one user turn) and keep `columns` beside it."""
    if on_overlong not in OVERLONG:
        raise ValueError(f"on_overlong={on_overlong!r}: must be one of {', '.join(OVERLONG)}")
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len={max_prompt_len}: must be >= 1")
    if not rows:
        raise ValueError("no rows to build prompts from")
    wanted = (prompt_column, *columns)
    for name in wanted:
        missing = [i for i, r in enumerate(rows) if name not in r]
        if missing:
            have = ", ".join(sorted(rows[missing[0]]))
            raise ValueError(f"column {name!r} missing in row {missing[0]} ({len(missing)} rows "
                             f"lack it); that row has: {have}")
    kept, texts, ids = [], [], []
    for i, row in enumerate(rows):
        try:
            text = _prompt_text(tokenizer, row[prompt_column], system_prompt, chat)
        except ValueError as e:
            raise ValueError(f"row {i}, column {prompt_column!r}: {e}") from None
        tok = encode(tokenizer, text)
        if len(tok) > max_prompt_len:
            if on_overlong == "error":
                raise ValueError(f"row {i}: its prompt is {len(tok)} tokens, longer than "
                                 f"max_prompt_len={max_prompt_len}; raise the limit or drop "
                                 f"such rows (on_overlong: drop)")
            continue
        if not tok:
            raise ValueError(f"row {i}: the prompt is empty")
        kept.append(i)
        texts.append(text)
        ids.append(tok)
    if not kept:
        raise ValueError(f"every one of the {len(rows)} prompts is longer than "
                         f"max_prompt_len={max_prompt_len}")
    table = np.full((len(ids), max_prompt_len), pad_id(tokenizer), np.int32)
    for r, tok in enumerate(ids):
        table[r, : len(tok)] = tok
    return PromptSet(ids=table, lengths=np.asarray([len(t) for t in ids], np.int32),
                     texts=tuple(texts),
                     columns={c: [rows[i][c] for i in kept] for c in columns},
                     source_rows=np.asarray(kept, np.int32), dropped=len(rows) - len(kept))


def _prompt_text(tokenizer: Any, prompt: Any, system_prompt: str | None, chat: bool) -> str:
    if chat:
        return render_chat(tokenizer, conversation(prompt, system_prompt=system_prompt))
    if not isinstance(prompt, str):
        raise ValueError(f"without a chat template a prompt must be a string, got "
                         f"{type(prompt).__name__}")
    return f"{system_prompt}\n{prompt}" if system_prompt else prompt


def split_rows(rows: Sequence[dict], eval_fraction: float, *, seed: int = 0
               ) -> tuple[list[dict], list[dict]]:
    """(train, eval): a seeded shuffle, the last `eval_fraction` of it held out."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction}: must lie in [0, 1)")
    order = np.random.default_rng(seed).permutation(len(rows))
    n_eval = int(round(eval_fraction * len(rows)))
    if eval_fraction and not 0 < n_eval < len(rows):
        raise ValueError(f"eval_fraction={eval_fraction} of {len(rows)} rows leaves no "
                         f"train or no eval row")
    cut = len(rows) - n_eval
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def train_eval_rows(data: Any) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of a config's `data` section: `eval_path`'s
    rows when it is set, else `eval_fraction` of `path`'s (`split_rows`, seed
    0). A ValueError starts with "data: "."""
    try:
        rows = read_rows(data.path, split=data.split)
        if data.eval_path is not None:
            return rows, read_rows(data.eval_path, split=data.eval_split)
        return split_rows(rows, data.eval_fraction, seed=0)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None


def batch_rows(step: int, batch: int, n: int, *, seed: int = 0, shuffle: bool = True
               ) -> np.ndarray:
    """i32[batch]: the rows of step `step` when each epoch visits all `n` rows
    once, in an order drawn from (seed, epoch) when `shuffle`. A pure function
    of its arguments, so a resumed run sees the same rows; a batch may span
    the end of one epoch and the start of the next."""
    if batch < 1 or n < 1:
        raise ValueError(f"batch={batch} and n={n} must be >= 1")
    pos = step * batch + np.arange(batch)
    epoch, within = np.divmod(pos, n)
    out = np.empty(batch, np.int64)
    for e in np.unique(epoch):
        order = (np.random.default_rng([seed, int(e)]).permutation(n) if shuffle
                 else np.arange(n))
        sel = epoch == e
        out[sel] = order[within[sel]]
    return out.astype(np.int32)
