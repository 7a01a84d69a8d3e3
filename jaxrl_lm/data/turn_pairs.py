"""Preference pairs of Markovian trajectories: each turn scored in its own context.

An env rollout here is Markovian: every turn's prompt is the whole state
re-rendered, and the model answers it with nothing else in context. A
trajectory's log-prob is then the sum over its turns of log p(answer_t |
prompt_t), each turn its own sequence, which is what a pair's two sides must
be scored as for the loss to train the policy the rollout sampled. (Joined
into one conversation, every later turn would be scored after the earlier
turns, a context the policy never played in.)

A row's `chosen` and `rejected` are lists of turns, each
`{"prompt": str, "completion": str}`, optionally with the exact token ids
the rollout used, `prompt_ids` and `completion_ids` (the completion's ids
include its stop token, so training teaches the model to stop); without
ids the texts are tokenized as given. The row's `prompt` is the first
observation, which both sides share (kept for reading; the turns carry every
token that is scored or conditioned on):

    {"prompt": "Guess my number, 1-8.",
     "chosen": [{"prompt": "Guess my number, 1-8.", "completion": "4\\n"},
                {"prompt": "4: higher. Guess, 1-8.", "completion": "6\\n"}],
     "rejected": [...]}

    pairs = build_pairs(rows, tokenizer, max_len=64)   # data.preference: a PairSet
    pairs.tokens    # i32[N, 2, K, L]: K turn rows per side (K = the most turns), pad after
    pairs.mask      # f32[N, 2, K, L]: 1 on each turn's completion tokens; 0 on empty rows

`max_len` bounds one turn (prompt + completion), not the trajectory.
`jaxrl_lm.data.preference.build_pairs` hands such rows here, so the
preference trainer and `jaxrl-lm train --algo.name dpo` take them as they
take TRL rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxrl_lm.models.tokenizer import encode, pad_id

TURN_KEYS = ("prompt", "completion")


def is_turn_list(value: Any) -> bool:
    """A response given as turns ({prompt, completion} dicts), not messages."""
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(t, dict) and "completion" in t for t in value))


def _turn_ids(tokenizer: Any, turn: Any, where: str) -> tuple[list[int], list[int]]:
    if not isinstance(turn, dict) or any(not isinstance(turn.get(k), str) for k in TURN_KEYS):
        raise ValueError(f"{where}: a turn is {{'prompt': str, 'completion': str}} (optionally "
                         f"'prompt_ids', 'completion_ids'), got {turn!r:.120}")
    ids = []
    for key in TURN_KEYS:
        given = turn.get(f"{key}_ids")
        if given is None:
            ids.append(encode(tokenizer, turn[key]))
        elif isinstance(given, list) and all(isinstance(i, int) and i >= 0 for i in given):
            ids.append(list(given))
        else:
            raise ValueError(f"{where}: {key}_ids must be a list of token ids (ints >= 0)")
    if not ids[0]:
        raise ValueError(f"{where}: the prompt is empty (the first scored token needs a "
                         f"token before it)")
    if not ids[1]:
        raise ValueError(f"{where}: the completion has no tokens")
    return ids[0], ids[1]


def build_turn_pairs(rows: Sequence[dict[str, Any]], tokenizer: Any, *, max_len: int,
                     chosen_column: str = "chosen", rejected_column: str = "rejected",
                     on_overlong: str = "error"):
    """Tokenize every row's turns and pad to [N, 2, K, max_len]: the fields of
    a `data.preference.PairSet`, as a dict."""
    kept, sides_of, first_prompt = [], [], []
    for i, row in enumerate(rows):
        sides = []
        for col in (chosen_column, rejected_column):
            turns = row.get(col)
            if not is_turn_list(turns):
                raise ValueError(f"row {i}, column {col!r}: expected a list of turns "
                                 f"({{'prompt', 'completion'}}), as the other rows have")
            sides.append([_turn_ids(tokenizer, t, f"row {i}, column {col!r}, turn {j}")
                          for j, t in enumerate(turns)])
        longest = max(len(p) + len(c) for side in sides for p, c in side)
        if longest > max_len:
            if on_overlong == "error":
                raise ValueError(f"row {i}: a turn is {longest} tokens (prompt + completion), "
                                 f"longer than max_len={max_len}; raise the limit or drop such "
                                 f"pairs (on_overlong: drop)")
            continue
        kept.append(i)
        sides_of.append(sides)
        first_prompt.append(len(sides[0][0][0]))
    if not kept:
        raise ValueError(f"every one of the {len(rows)} pairs has a turn longer than "
                         f"max_len={max_len}")
    k = max(len(side) for sides in sides_of for side in sides)
    pad = pad_id(tokenizer)
    tokens = np.full((len(kept), 2, k, max_len), pad, np.int32)
    mask = np.zeros((len(kept), 2, k, max_len), np.float32)
    lengths = np.zeros((len(kept), 2), np.int32)
    for r, sides in enumerate(sides_of):
        for s, side in enumerate(sides):
            for t, (p, c) in enumerate(side):
                tokens[r, s, t, : len(p) + len(c)] = p + c
                mask[r, s, t, len(p): len(p) + len(c)] = 1.0
                lengths[r, s] = max(lengths[r, s], len(p) + len(c))
    return dict(tokens=tokens, mask=mask, lengths=lengths,
                prompt_len=np.asarray(first_prompt, np.int32),
                source_rows=np.asarray(kept, np.int32), dropped=len(rows) - len(kept),
                pad_id=pad)
