"""Preference pairs tokenized once, before anything compiles.

Rows carry TRL's columns: `prompt`, `chosen`, `rejected`. Each is plain text
or conversational: the prompt a string or a list of {role, content}
messages, each response a string (one assistant turn) or a list of messages
that continues the prompt. A response may be a whole multi-turn trajectory
(PAPRIKA's multi-turn DPO): assistant turns interleaved with user turns
(the env's observations), e.g.

    {"prompt": [{"role": "user", "content": "Guess my number, 1-8."}],
     "chosen": [{"role": "assistant", "content": "4"},
                {"role": "user", "content": "higher"},
                {"role": "assistant", "content": "6"}],
     "rejected": [...]}

A response's first message is the assistant's. Only the assistant's tokens
are scored (`mask`), so a response's log-prob is the sum over all its
assistant turns; user turns after the last assistant turn change no scored
token and are left out.

    pairs = build_pairs(rows, tokenizer, max_len=256)
    pairs.tokens     # i32[N, 2, L]: prompt + chosen, prompt + rejected, pad after
    pairs.mask       # f32[N, 2, L]: 1 on the assistant's tokens

With `chat` the conversation goes through the tokenizer's chat template
(PLAIN_TEMPLATE without one); an assistant turn's text is what the template
adds for it after the generation prompt, closing tokens included (TRL's
rule). The template must render each turn as a continuation of the turns
before it; one that rewrites earlier turns is an error. The text between
two scored stretches is tokenized on its own, as a rollout would append it.
Without `chat` prompt and responses must be strings, joined as given.

Rows whose responses are lists of {prompt, completion} turns (Markovian env
trajectories, each turn scored in its own context) go to
`jaxrl_lm.data.turn_pairs`: tokens i32[N, 2, K, L], one row per turn.

A pair longer than `max_len` is never cut: `on_overlong="error"` stops with
the row and its length, `"drop"` leaves the pair out and counts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxrl_lm.data.chat import conversation, render_chat
from jaxrl_lm.data.prompts import OVERLONG
from jaxrl_lm.data.turn_pairs import build_turn_pairs, is_turn_list
from jaxrl_lm.models.tokenizer import encode, pad_id

RESPONSE_ROLES = ("assistant", "user")  # in a response: the agent's turns, the env's turns


@dataclasses.dataclass(frozen=True)
class PairSet:
    # i32[N, 2, L]: [:, 0] prompt + chosen, [:, 1] prompt + rejected; for Markovian
    # trajectories (data.turn_pairs) i32[N, 2, K, L]: one row per turn
    tokens: np.ndarray
    mask: np.ndarray  # f32, tokens' shape: 1 on the scored (assistant) tokens, else 0
    lengths: np.ndarray  # i32[N, 2]: tokens of each sequence (its longest turn row)
    prompt_len: np.ndarray  # i32[N]: tokens of the shared prompt
    source_rows: np.ndarray  # i32[N]: index of each kept pair in the rows given
    dropped: int  # pairs left out for being longer than max_len
    pad_id: int  # the id after each sequence's end

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of pairs `idx`, as a batch: {"tokens", "mask"}."""
        return {"tokens": self.tokens[idx], "mask": self.mask[idx]}

    def padded_to(self, length: int) -> "PairSet":
        """The same pairs padded to `length` tokens (cutting padding only)."""
        if length < int(self.lengths.max()):
            raise ValueError(f"length={length}: the longest sequence has "
                             f"{int(self.lengths.max())} tokens")
        grow = ((0, 0),) * (self.tokens.ndim - 1) + ((0, max(length - self.tokens.shape[-1], 0)),)
        return dataclasses.replace(
            self, tokens=np.pad(self.tokens, grow, constant_values=self.pad_id)[..., :length],
            mask=np.pad(self.mask, grow)[..., :length])


def response_messages(value: Any) -> list[dict[str, str]]:
    """A response as messages: a string is one assistant turn; a list must hold
    {role: assistant | user, content: str} messages, the first an assistant's."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"a response must be a string or a non-empty list of messages, "
                         f"got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if (not isinstance(m, dict) or m.get("role") not in RESPONSE_ROLES
                or not isinstance(m.get("content"), str)):
            raise ValueError(f"message {i}: expected {{'role': one of "
                             f"{', '.join(RESPONSE_ROLES)}, 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[0]["role"] != "assistant":
        raise ValueError(f"message 0: a response starts with the assistant's turn, got role "
                         f"{out[0]['role']!r} (put the shared turns in the prompt)")
    return out


def chat_segments(tokenizer: Any, prompt_msgs: list[dict], response: list[dict]
                  ) -> tuple[str, list[tuple[str, bool]]]:
    """(prompt text, [(text, scored)] after it) for one response rendered
    through the chat template, turn by turn."""
    prompt_text = render_chat(tokenizer, prompt_msgs, add_generation_prompt=True)
    done, msgs, segments = prompt_text, list(prompt_msgs), []
    for i, m in enumerate(response):
        if m["role"] != "assistant":
            msgs.append(m)
            continue
        before = render_chat(tokenizer, msgs, add_generation_prompt=True)
        msgs.append(m)
        after = render_chat(tokenizer, msgs, add_generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError(f"message {i}: the chat template does not render this turn as a "
                             f"continuation of the turns before it (it rewrites earlier "
                             f"turns), so its tokens cannot be located")
        if len(before) > len(done):
            segments.append((before[len(done):], False))
        segments.append((after[len(before):], True))
        done = after
    return prompt_text, segments


def pair_texts(tokenizer: Any, row: dict, columns: tuple[str, str, str], *,
               system_prompt: str | None, chat: bool):
    """(prompt text, chosen segments, rejected segments) of one row; a
    ValueError names the column at fault."""
    p_col, *r_cols = columns
    if not chat:
        for col in columns:
            if not isinstance(row[col], str):
                raise ValueError(f"column {col!r}: without a chat template (data.chat: false) "
                                 f"it must be a string, got {type(row[col]).__name__}")
        prompt = f"{system_prompt}\n{row[p_col]}" if system_prompt else row[p_col]
        return (prompt, *[[(row[c], True)] for c in r_cols])
    try:
        prompt_msgs = conversation(row[p_col], system_prompt=system_prompt)
    except ValueError as e:
        raise ValueError(f"column {p_col!r}: {e}") from None
    out = []
    for col in r_cols:
        try:
            prompt_text, segs = chat_segments(tokenizer, prompt_msgs, response_messages(row[col]))
        except ValueError as e:
            raise ValueError(f"column {col!r}: {e}") from None
        out.append(segs)
    return (prompt_text, *out)


def _tokens(tokenizer: Any, prompt_ids: list[int], segments) -> tuple[list[int], list[float]]:
    ids, mask = list(prompt_ids), [0.0] * len(prompt_ids)
    for text, scored in segments:
        t = encode(tokenizer, text)
        ids += t
        mask += [float(scored)] * len(t)
    return ids, mask


def build_pairs(rows: Sequence[dict[str, Any]], tokenizer: Any, *, max_len: int,
                prompt_column: str = "prompt", chosen_column: str = "chosen",
                rejected_column: str = "rejected", system_prompt: str | None = None,
                chat: bool = True, on_overlong: str = "error") -> PairSet:
    """Render, tokenize and pad every row's two sequences to `max_len`."""
    if on_overlong not in OVERLONG:
        raise ValueError(f"on_overlong={on_overlong!r}: must be one of {', '.join(OVERLONG)}")
    if max_len < 2:
        raise ValueError(f"max_len={max_len}: must be >= 2")
    if not rows:
        raise ValueError("no rows to build preference pairs from")
    if is_turn_list(rows[0].get(chosen_column)):  # Markovian trajectories, turn by turn
        return PairSet(**build_turn_pairs(rows, tokenizer, max_len=max_len,
                                          chosen_column=chosen_column,
                                          rejected_column=rejected_column,
                                          on_overlong=on_overlong))
    columns = (prompt_column, chosen_column, rejected_column)
    for name in columns:
        missing = [i for i, r in enumerate(rows) if name not in r]
        if missing:
            have = ", ".join(sorted(rows[missing[0]]))
            raise ValueError(f"column {name!r} missing in row {missing[0]} ({len(missing)} rows "
                             f"lack it); that row has: {have}")
    kept, seqs, prompt_lens = [], [], []
    for i, row in enumerate(rows):
        try:
            prompt_text, *responses = pair_texts(tokenizer, row, columns,
                                                 system_prompt=system_prompt, chat=chat)
        except ValueError as e:
            raise ValueError(f"row {i}, {e}") from None
        prompt_ids = encode(tokenizer, prompt_text)
        if not prompt_ids:
            raise ValueError(f"row {i}, column {prompt_column!r}: the prompt is empty (the "
                             f"first scored token needs a token before it)")
        pair = [_tokens(tokenizer, prompt_ids, segs) for segs in responses]
        for col, (ids, mask) in zip(columns[1:], pair):
            if not any(mask):
                raise ValueError(f"row {i}, column {col!r}: the response has no tokens")
        longest = max(len(ids) for ids, _ in pair)
        if longest > max_len:
            if on_overlong == "error":
                col = columns[1] if len(pair[0][0]) == longest else columns[2]
                raise ValueError(f"row {i}: prompt + {col} is {longest} tokens, longer than "
                                 f"max_len={max_len}; raise the limit or drop such pairs "
                                 f"(on_overlong: drop)")
            continue
        kept.append(i)
        seqs.append(pair)
        prompt_lens.append(len(prompt_ids))
    if not kept:
        raise ValueError(f"every one of the {len(rows)} pairs is longer than max_len={max_len}")
    tokens = np.full((len(kept), 2, max_len), pad_id(tokenizer), np.int32)
    mask = np.zeros((len(kept), 2, max_len), np.float32)
    for r, pair in enumerate(seqs):
        for s, (ids, m) in enumerate(pair):
            tokens[r, s, : len(ids)] = ids
            mask[r, s, : len(m)] = m
    lengths = np.asarray([[len(ids) for ids, _ in pair] for pair in seqs], np.int32)
    return PairSet(tokens=tokens, mask=mask, lengths=lengths,
                   prompt_len=np.asarray(prompt_lens, np.int32),
                   source_rows=np.asarray(kept, np.int32), dropped=len(rows) - len(kept),
                   pad_id=pad_id(tokenizer))
