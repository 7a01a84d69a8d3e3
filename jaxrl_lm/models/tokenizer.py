"""The character-level tokenizer of the embedded default policy.

One token per character, stored as an ordinary HF `tokenizer.json`, so the
default goes through the same `AutoTokenizer.from_pretrained` path as a real
Qwen2/Llama/Gemma folder. Vocabulary (128 ids, a multiple of every mesh axis
size up to 128, so the `vocab` axis shards evenly):

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4 "\\n"   5..99 " ".."~" (0x20..0x7E)
    100..127 <reserved_0>..<reserved_27>   (special, never produced by encode)

Characters outside the table encode to <unk>. Encoding adds no special tokens
(callers prepend <bos> themselves when they want it) and decoding concatenates
the characters with no separator and no clean-up of spaces, so
decode(encode(s)) == s for every string over the table, and decode(a + b) ==
decode(a) + decode(b), which the jitted text interface in envs/text.py relies on.

Regenerate the shipped folder with

    python -m jaxrl_lm.models.default --write-default

Also here, for every tokenizer (HF or the default): `encode` (ids without
special tokens), `pad_id` and `stop_tokens`, the one rule each that the
trainer, the evaluation and the benches share.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = "\n" + "".join(chr(c) for c in range(0x20, 0x7F))
VOCAB_SIZE = 128
RESERVED = tuple(f"<reserved_{i}>" for i in range(VOCAB_SIZE - len(SPECIALS) - len(CHARS)))
DEFAULT_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "default"


def char_vocab() -> dict[str, int]:
    """Token string -> id for the whole table (specials, characters, reserved)."""
    tokens = list(SPECIALS) + list(CHARS) + list(RESERVED)
    return {tok: i for i, tok in enumerate(tokens)}


def char_tokenizer() -> Tokenizer:
    """A `tokenizers.Tokenizer` with one token per character of `CHARS`.

    The model is BPE with no merges and no pre-tokenizer: the whole input is one
    word, split into single characters, each looked up in the table. Without an
    explicit decoder `tokenizers` would join tokens with spaces; `Fuse` joins
    them with nothing, which is what makes decoding exact.
    """
    vocab = char_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    # normalized=False: match the literal text "<eos>" etc.; no strip: keep
    # the spaces around special tokens as characters.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIALS + RESERVED])
    return tok


def quiet_transformers() -> None:
    """Before importing transformers: skip its advisory notices (without torch it
    prints "PyTorch was not found" on import, though we only use its tokenizers
    and configs). An explicit TRANSFORMERS_NO_ADVISORY_WARNINGS is kept."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def char_tokenizer_hf(model_max_length: int = 2048):
    """The same tokenizer wrapped for transformers (PreTrainedTokenizerFast)."""
    quiet_transformers()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=char_tokenizer(), bos_token=BOS, eos_token=EOS,
        pad_token=PAD, unk_token=UNK, clean_up_tokenization_spaces=False,
        model_max_length=model_max_length)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, for HF or simple tokenizers."""
    try:
        out = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        out = tokenizer.encode(text)
    return list(getattr(out, "ids", out))


def pad_id(tokenizer: Any) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS,
    else 0 (padding is always masked out; the id only has to exist)."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0


def stop_tokens(tokenizer: Any, *, newline: bool = True) -> tuple[int, ...]:
    """A turn's answer ends at a newline (unless `newline` is false) or at EOS."""
    ids = list(encode(tokenizer, "\n")) if newline else []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    return tuple(dict.fromkeys(ids))
