"""What tests/test_verifiers.py (hand-worked cases) and
tests/test_verifiers_property.py (generated strings) share: plain-Python
references for answer extraction and the format reward, the two tokenizers
(the embedded character one and a byte-level BPE trained here, with
multi-character tokens and tokens holding part of a UTF-8 character), and
helpers that turn text into padded token ids."""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.verifiers import ByteTable, normalize_bytes

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

WS = b" \t\n\r\x0b\x0c"
T = 192          # completion tokens
WINDOW = 12      # extraction width
REF_WIDTH = 12
PIECES = ["####", "#", "\\boxed{", "\\boxed", "{", "}", "\\frac", "<answer>", "</answer>",
          "<answer", "answer>", "<think>", "</think>", " ", "  ", "\n", "\t", "0", "00", "1",
          "7", "42", "-", "+", ".", ",", "$", "x", "ab", "é", "π", "\\", "/"]
# What follows `length` in a row: markers that must all be ignored.
GARBAGE = "}</answer>#### 9<answer>1</answer></think> {"


# --- plain-Python references ----------------------------------------------------

def py_extract(text: str, marker: str, width: int) -> bytes | None:
    """The extracted answer bytes, or None when not found."""
    b = text.encode("utf-8")
    if marker == "####":
        i = b.rfind(b"####")
        if i < 0:
            return None
        rest = b[i + 4:].lstrip(WS)
        j = 0
        while j < len(rest) and rest[j] not in WS:
            j += 1
        ans = rest[:j]
    elif marker == "boxed":
        i = b.rfind(b"\\boxed{")
        if i < 0:
            return None
        j, depth = i + 7, 0
        while j < len(b):
            if b[j] == ord("{"):
                depth += 1
            elif b[j] == ord("}"):
                if depth == 0:
                    break
                depth -= 1
            j += 1
        else:
            return None
        ans = b[i + 7: j].strip(WS)
    else:
        i = b.rfind(b"<answer>")
        if i < 0:
            return None
        j = b.find(b"</answer>", i + 8)
        if j < 0:
            return None
        ans = b[i + 8: j].strip(WS)
    if not ans or len(ans) > width:
        return None
    return ans


FORMAT_RE = re.compile(rb"<think>.*</think>[ \t\n\r\x0b\x0c]*<answer>.*</answer>", re.DOTALL)


def py_format(text: str) -> float:
    return 1.0 if FORMAT_RE.search(text.encode("utf-8")) else 0.0


# --- tokenizers -------------------------------------------------------------------

@functools.cache
def char_tok():
    # The tokenizer `default_policy` returns, without initialising the model.
    from jaxrl_lm.models import hf
    from jaxrl_lm.models.tokenizer import DEFAULT_DIR

    return hf.load_tokenizer(DEFAULT_DIR)


@functools.cache
def bpe_tok():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["<think>2 + 2 = 4, so</think>\n<answer> 42 </answer>",
              "The answer is #### 1,234.50 and \\boxed{\\frac{1}{2}} or \\boxed{7}.",
              "héllo <answer>$1,000</answer> #### -0.5 {{}} ##### 00"] * 20
    tok.train_from_iterator(corpus, trainer)
    return tok


TOKENIZERS = {"char": char_tok, "bpe": bpe_tok}


@functools.cache
def table_of(name: str) -> ByteTable:
    return ByteTable(TOKENIZERS[name]())


def to_ids(tok, text: str, t: int = T) -> tuple[np.ndarray, int]:
    ids = encode(tok, text)
    assert len(ids) <= t, len(ids)
    garbage = encode(tok, GARBAGE) * (t // 4 + 1)
    return np.asarray(ids + garbage[: t - len(ids)], np.int32), len(ids)


def host_text(tok, ids, length) -> str:
    return tok.decode([int(i) for i in ids[:length]])


@functools.cache
def normalize_jit(mode):
    return jit(functools.partial(normalize_bytes, mode=mode))
