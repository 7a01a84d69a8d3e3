"""Reward verifiers on token ids: grade a completion's final answer inside jit.

A free-form completion (a chain of thought, then an answer) is graded by
extracting its final answer after a marker, normalising it and comparing the
bytes with a reference answer normalised once on the host. Everything after
the host-side tables is plain jnp: jittable, vmappable, no host callback.

Bytes, not characters. `ByteTable(tokenizer)` holds the UTF-8 bytes of every
vocabulary id decoded alone (as `TextInterface` in envs/text.py does), so a
completion's ids i32[T] become one byte stream u8[T*W] (W = the longest
token). That is exact for tokenizers whose decoding is concatenative,
decode(a + b) == decode(a) + decode(b): the embedded character tokenizer,
byte-level BPE (GPT-2, Qwen, Llama 3). A byte-level BPE token holding part of
a multi-byte character decodes alone to U+FFFD; its raw bytes are then read
from the token's byte-level string (GPT-2 alphabet) when they decode to
exactly what the tokenizer returned, so the stream is the UTF-8 of the decoded
text even across split characters. SentencePiece-style tokenizers that strip
a leading space on decode are not concatenative and are not supported.

Whitespace means the six ASCII bytes space, \\t, \\n, \\r, \\v, \\f
(`envs.text.WHITESPACE`); all markers are ASCII, so a UTF-8 continuation
byte never matches one.

Answer extraction, `extract_answer(stream, total, marker=..., width=A)`; the
last occurrence of the marker wins (the one that starts last, as
`str.rfind`):

* ``"####"`` (GSM8K): after the last ``####``, whitespace is skipped, and
  the answer is the maximal run of non-whitespace bytes that follows (up to
  the next whitespace or the end of the completion). ``"#### 42"`` -> ``42``.
* ``"boxed"``: the content of the last ``\\boxed{`` up to its matching
  ``}``. Every ``{`` and ``}`` in the content counts for the nesting, at any
  depth: ``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``. Backslash-escaped
  braces count like any other (``\\{1\\}`` balances, a lone ``\\{`` does
  not). Not handled: ``\\boxed {x}`` (space before the brace), ``\\boxed x``,
  ``\\fbox``. No matching ``}`` -> no answer.
* ``"answer_tag"``: the content between the last ``<answer>`` and the first
  ``</answer>`` after it. No closing tag after it -> no answer.

The span is then trimmed of surrounding whitespace. `found` is true iff the
marker occurs, the span is closed (brace / closing tag), and the trimmed span
is non-empty and at most `width` bytes (a longer one is not cut: it is not
found). The result is u8[width] (zeros after the length), its length i32[]
(0 when not found) and found bool[].

Normalisation, `normalize_answer(s, mode)` on the host (the references, and
the independent reference of the tests) and `normalize_bytes(buf, n, mode)`
in jit, the same rule:

* ``"exact"``: strip surrounding whitespace, nothing else.
* ``"number"``: (1) delete every ``,``, ``$`` and whitespace byte anywhere;
  (2) delete one leading ``+``; (3) delete one trailing ``.``; (4) if what is
  left is a decimal number, ``-?[0-9]+(\\.[0-9]+)?`` (ASCII digits only; no
  exponent, no ``.5``), write it canonically: the integer part without
  leading zeros (one ``0`` kept), the fraction without trailing zeros, the
  ``.`` dropped when no fraction digit remains, and ``-0`` becomes ``0``.
  Otherwise the string from step 3 is the answer. So ``"$1,234.50"`` ->
  ``"1234.5"``, ``"+007."`` -> ``"7"``, ``"-0.00"`` -> ``"0"``, ``"1/2"`` ->
  ``"1/2"``, ``"1e3"`` -> ``"1e3"``.

`answer_match(stream, total, ref, ref_len, marker=, mode=)` -> (correct,
found): correct iff found and the normalised answer equals the reference
bytes. `reference_table(answers, mode, width)` builds the references on the
host. `format_reward(stream, total)`: see there. `Verifier` bundles a
`ByteTable` with a marker, mode and width for a trainer: build it once, then
``jax.vmap(verifier)(ids_bt, length_b, ref_ba, ref_len_b)``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.envs.text import WHITESPACE, _decode, _pad_rows, _vocab_size

MARKERS = ("####", "boxed", "answer_tag")
MODES = ("exact", "number")

_WS = np.frombuffer(WHITESPACE.encode("ascii"), np.uint8)
_HASHES = b"####"
_BOXED = b"\\boxed{"
_ANSWER_OPEN, _ANSWER_CLOSE = b"<answer>", b"</answer>"
_THINK_OPEN, _THINK_CLOSE = b"<think>", b"</think>"
_NUMBER_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


def _check(marker: str | None = None, mode: str | None = None) -> None:
    if marker is not None and marker not in MARKERS:
        raise ValueError(f"marker={marker!r}: must be one of {MARKERS}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")


# --- token bytes (host) -------------------------------------------------------

def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of the GPT-2 byte-level alphabet: the bytes '!'..'~',
    0xA1..0xAC and 0xAE..0xFF stand for themselves; every other byte, in
    increasing order, is written chr(256), chr(257), ..."""
    itself = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = {}, 0
    for b in range(256):
        if b in itself:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


_BYTE_LEVEL = _byte_level_alphabet()


def _token_string(tokenizer: Any, v: int) -> str | None:
    for attr in ("id_to_token", "convert_ids_to_tokens"):
        if hasattr(tokenizer, attr):
            try:
                s = getattr(tokenizer, attr)(v)
            except Exception:  # noqa: BLE001 - any failure: no raw bytes
                return None
            return s if isinstance(s, str) else None
    return None


def token_bytes_of(tokenizer: Any, v: int) -> bytes:
    """The UTF-8 bytes of token `v` decoded alone; for a byte-level BPE token
    that is part of a multi-byte character (decodes to U+FFFD), its raw bytes
    when they decode (with replacement) to exactly the tokenizer's text."""
    text = _decode(tokenizer, [v])
    if "\ufffd" in text:
        s = _token_string(tokenizer, v)
        if s and all(c in _BYTE_LEVEL for c in s):
            raw = bytes(_BYTE_LEVEL[c] for c in s)
            if raw.decode("utf-8", errors="replace") == text:
                return raw
    return text.encode("utf-8")


class ByteTable:
    """Bytes of every vocabulary id, built once on the host from a tokenizer.

    token_bytes u8[V, W] (zeros after token_nbytes i32[V]). Ids outside
    [0, V) (a model vocabulary padded past the tokenizer's) count as no bytes.
    """

    def __init__(self, tokenizer: Any):
        vocab = [token_bytes_of(tokenizer, v) for v in range(_vocab_size(tokenizer))]
        width = max(1, max(len(b) for b in vocab))
        self.token_bytes = jnp.asarray(_pad_rows([list(b) for b in vocab], width, 0), jnp.uint8)
        self.token_nbytes = jnp.asarray([len(b) for b in vocab], jnp.int32)

    @property
    def width(self) -> int:
        """W, the most bytes of one token."""
        return int(self.token_bytes.shape[1])

    def byte_stream(self, ids: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(stream u8[T*W], total i32[]): the bytes of ids[:length] in order,
        zeros after `total`. Jittable and vmappable."""
        ids = jnp.asarray(ids, jnp.int32)
        (t_len,) = ids.shape
        vocab, width = self.token_nbytes.shape[0], self.width
        known = (ids >= 0) & (ids < vocab) & (jnp.arange(t_len) < length)
        safe = jnp.where(known, ids, 0)
        nb_t = jnp.where(known, self.token_nbytes[safe], 0)
        first_t = jnp.cumsum(nb_t) - nb_t  # stream position of each token's first byte
        col = jnp.arange(width, dtype=jnp.int32)
        n = t_len * width
        dest_tw = jnp.where(col[None, :] < nb_t[:, None], first_t[:, None] + col[None, :], n)
        stream = jnp.zeros((n,), jnp.uint8).at[dest_tw.reshape(-1)].set(
            self.token_bytes[safe].reshape(-1), mode="drop")
        return stream, nb_t.sum(dtype=jnp.int32)


# --- jittable byte helpers ----------------------------------------------------

def _is_ws(x: jax.Array) -> jax.Array:
    return (x[..., None] == jnp.asarray(_WS)).any(-1)


def _occurs(stream: jax.Array, total: jax.Array, pattern: bytes) -> jax.Array:
    """bool[N]: `pattern` starts at this position and ends by `total`."""
    n, k = stream.shape[0], len(pattern)
    padded = jnp.concatenate([stream, jnp.zeros((k,), jnp.uint8)])
    hit = jnp.arange(n) + k <= total
    for j, b in enumerate(pattern):
        hit &= padded[j: j + n] == b
    return hit


def _last(hit: jax.Array) -> jax.Array:
    """Position of the last true entry, -1 if none."""
    return jnp.max(jnp.where(hit, jnp.arange(hit.shape[0]), -1))


def _first_from(cond: jax.Array, start: jax.Array, default: jax.Array) -> jax.Array:
    """The first position >= start where cond holds, else `default`."""
    pos = jnp.arange(cond.shape[0])
    return jnp.min(jnp.where(cond & (pos >= start), pos, default))


def _trim(x: jax.Array, begin: jax.Array, end: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[begin, end) without its leading and trailing whitespace (empty: end, end)."""
    pos = jnp.arange(x.shape[0])
    solid = ~_is_ws(x) & (pos >= begin) & (pos < end)
    lo = jnp.min(jnp.where(solid, pos, end))
    hi = jnp.max(jnp.where(solid, pos + 1, lo))
    return lo, hi


def _compact(buf: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The kept bytes moved to the front, in order, zeros after; their count."""
    a = buf.shape[0]
    dest = jnp.where(keep, jnp.cumsum(keep) - 1, a)
    return jnp.zeros((a,), jnp.uint8).at[dest].set(buf, mode="drop"), keep.sum(dtype=jnp.int32)


# --- extraction ---------------------------------------------------------------

def extract_answer(stream: jax.Array, total: jax.Array, *, marker: str,
                   width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(answer u8[width], length i32[], found bool[]) of one byte stream.

    The rule of each marker is in the module docstring. Jittable, vmappable.
    """
    _check(marker=marker)
    if int(width) != width or width < 1:
        raise ValueError(f"width={width!r}: must be a positive integer")
    stream = jnp.asarray(stream, jnp.uint8)
    n = stream.shape[0]
    pos = jnp.arange(n)
    inside = pos < total
    ws = _is_ws(stream)
    if marker == "####":
        last = _last(_occurs(stream, total, _HASHES))
        lo = _first_from(inside & ~ws, last + len(_HASHES), total)
        hi = _first_from(inside & ws, lo, total)
        closed = jnp.bool_(True)
    else:
        if marker == "boxed":
            last = _last(_occurs(stream, total, _BOXED))
            begin = last + len(_BOXED)
            # Net open braces up to and including each position; the match of
            # the "{" at begin - 1 is the first later position below its level.
            step = (stream == ord("{")).astype(jnp.int32) - (stream == ord("}"))
            depth = jnp.cumsum(jnp.where(inside, step, 0))
            level = depth[jnp.clip(begin - 1, 0, n - 1)]
            end = _first_from(inside & (depth < level), begin, n)
        else:
            last = _last(_occurs(stream, total, _ANSWER_OPEN))
            begin = last + len(_ANSWER_OPEN)
            end = _first_from(_occurs(stream, total, _ANSWER_CLOSE), begin, n)
        closed = end < n
        lo, hi = _trim(stream, begin, jnp.minimum(end, n))
    length = hi - lo
    found = (last >= 0) & closed & (length > 0) & (length <= width)
    length = jnp.where(found, length, 0).astype(jnp.int32)
    padded = jnp.concatenate([stream, jnp.zeros((width,), jnp.uint8)])
    window = jax.lax.dynamic_slice(padded, (jnp.clip(lo, 0, n),), (width,))
    answer = jnp.where(jnp.arange(width) < length, window, 0).astype(jnp.uint8)
    return answer, length, found


# --- normalisation ------------------------------------------------------------

def normalize_answer(s: str, mode: str = "number") -> str:
    """Host normalisation of one answer (rule in the module docstring)."""
    _check(mode=mode)
    if mode == "exact":
        return s.strip(WHITESPACE)
    s = "".join(c for c in s if c not in ",$" and c not in WHITESPACE)
    if s.startswith("+"):
        s = s[1:]
    if s.endswith("."):
        s = s[:-1]
    m = _NUMBER_RE.fullmatch(s)
    if m is None:
        return s
    sign, whole, frac = m.group(1), m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    out = whole + ("." + frac if frac else "")
    return out if out == "0" else sign + out


def normalize_bytes(buf: jax.Array, length: jax.Array, *,
                    mode: str) -> tuple[jax.Array, jax.Array]:
    """Jitted `normalize_answer` on bytes: (u8[A], length) -> (u8[A], length)."""
    _check(mode=mode)
    buf = jnp.asarray(buf, jnp.uint8)
    a = buf.shape[0]
    pos = jnp.arange(a)
    inside = pos < length
    if mode == "exact":
        lo, hi = _trim(buf, 0, length)
        return _compact(buf, (pos >= lo) & (pos < hi))
    s, m = _compact(buf, inside & ~_is_ws(buf) & (buf != ord(",")) & (buf != ord("$")))
    start = ((m > 0) & (s[0] == ord("+"))).astype(jnp.int32)
    end = m - ((m > start) & (s[jnp.maximum(m - 1, 0)] == ord("."))).astype(jnp.int32)
    # Is s[start:end] -?[0-9]+(\.[0-9]+)? ?
    neg = (end > start) & (s[jnp.minimum(start, a - 1)] == ord("-"))
    digits_from = start + neg.astype(jnp.int32)
    body = (pos >= digits_from) & (pos < end)
    is_digit = (s >= ord("0")) & (s <= ord("9"))
    is_dot = s == ord(".")
    n_dots = (body & is_dot).sum()
    dot = jnp.min(jnp.where(body & is_dot, pos, end))  # == end without a fraction
    number = ((end > digits_from) & jnp.all(~body | is_digit | is_dot) & (n_dots <= 1)
              & (dot > digits_from) & ((n_dots == 0) | (dot < end - 1)))
    # Canonical form: s[int_lo:num_hi], with the sign at `start` unless zero.
    int_lo = jnp.min(jnp.where(body & (pos < dot) & (s != ord("0")), pos, dot - 1))
    frac_nz = (pos > dot) & (pos < end) & (s != ord("0"))
    num_hi = jnp.where(frac_nz.any(), jnp.max(jnp.where(frac_nz, pos + 1, 0)), dot)
    zero = (num_hi - int_lo == 1) & (s[jnp.clip(int_lo, 0, a - 1)] == ord("0"))
    keep = jnp.where(
        number,
        ((pos >= int_lo) & (pos < num_hi)) | ((pos == start) & neg & ~zero),
        (pos >= start) & (pos < end))
    return _compact(s, keep)


# --- matching -----------------------------------------------------------------

def reference_table(answers: list[str], mode: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference answers normalised on the host: (u8[N, width], i32[N]).

    Raises ValueError naming the row when a normalised answer is empty (it
    could never match: an extracted answer is never empty) or longer than
    `width` UTF-8 bytes.
    """
    _check(mode=mode)
    if int(width) != width or width < 1:
        raise ValueError(f"width={width!r}: must be a positive integer")
    table = np.zeros((len(answers), width), np.uint8)
    lengths = np.zeros((len(answers),), np.int32)
    for i, answer in enumerate(answers):
        b = normalize_answer(answer, mode).encode("utf-8")
        if not b:
            raise ValueError(f"reference answer {i} ({answer!r}) is empty after "
                             f"normalisation (mode={mode!r})")
        if len(b) > width:
            raise ValueError(f"reference answer {i} ({answer!r}) normalises to {len(b)} bytes, "
                             f"more than width={width}: raise the width")
        table[i, : len(b)] = np.frombuffer(b, np.uint8)
        lengths[i] = len(b)
    return table, lengths


def answer_match(stream: jax.Array, total: jax.Array, ref: jax.Array, ref_len: jax.Array, *,
                 marker: str, mode: str,
                 window: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(correct bool[], found bool[]) of one byte stream against one reference
    u8[A] (normalised with the same `mode`, e.g. by `reference_table`) of
    length `ref_len`. `window`: the most bytes of an extracted answer before
    normalisation (default A). Jittable, vmappable."""
    ref = jnp.asarray(ref, jnp.uint8)
    width = ref.shape[0] if window is None else int(window)
    buf, length, found = extract_answer(stream, total, marker=marker, width=width)
    buf, length = normalize_bytes(buf, length, mode=mode)
    w = max(width, ref.shape[0])
    buf = jnp.pad(buf, (0, w - width))
    ref = jnp.pad(ref, (0, w - ref.shape[0]))
    same = (buf == ref) | (jnp.arange(w) >= ref_len)
    return found & (length == ref_len) & same.all(), found


def format_reward(stream: jax.Array, total: jax.Array) -> jax.Array:
    """f32[]: 1.0 iff the completion contains, in this order, ``<think>``,
    anything, ``</think>``, only whitespace, ``<answer>``, anything,
    ``</answer>``; else 0.0. Exactly: the regex
    ``<think>.*</think>[ \\t\\n\\r\\v\\f]*<answer>.*</answer>`` (``.``
    matching newlines too) matches somewhere in bytes [0, total); text before
    ``<think>`` and after ``</answer>`` is allowed, and any ``</think>`` that
    is followed by whitespace and ``<answer>`` will do. Jittable, vmappable."""
    stream = jnp.asarray(stream, jnp.uint8)
    n = stream.shape[0]
    pos = jnp.arange(n)
    first_think = _first_from(_occurs(stream, total, _THINK_OPEN), 0, n)
    last_close = _last(_occurs(stream, total, _ANSWER_CLOSE))
    # next_solid[p]: first non-whitespace position >= p (n if none).
    solid = ~_is_ws(stream) & (pos < total)
    next_solid = jax.lax.cummin(jnp.where(solid, pos, n), reverse=True)
    next_solid = jnp.concatenate([next_solid, jnp.full((len(_THINK_CLOSE) + 1,), n)])
    after = next_solid[pos + len(_THINK_CLOSE)]  # first solid byte after a </think> at pos
    opens = jnp.concatenate([_occurs(stream, total, _ANSWER_OPEN), jnp.zeros((1,), bool)])
    good = (_occurs(stream, total, _THINK_CLOSE) & (pos >= first_think + len(_THINK_OPEN))
            & opens[jnp.minimum(after, n)] & (last_close >= after + len(_ANSWER_OPEN)))
    return good.any().astype(jnp.float32)


class Verifier:
    """A tokenizer's `ByteTable` with a marker, a mode and a reference width.

    Build once on the host; the calls are jittable, for one completion (vmap
    for a batch):

      verifier(ids i32[T], length i32[], ref u8[width], ref_len i32[])
          -> (reward f32[] (1.0 correct, else 0.0), found bool[])
      verifier.format(ids, length) -> f32[]   (`format_reward`)
      verifier.extract(ids, length) -> (u8[window], i32[], bool[]), normalised
      verifier.references(answers) -> (u8[N, width], i32[N])   (host)

    window: the most bytes of an extracted answer before normalisation (a
    longer one is not found); default `width`.
    """

    def __init__(self, tokenizer: Any, *, marker: str = "####", mode: str = "number",
                 width: int = 32, window: int | None = None, table: ByteTable | None = None):
        _check(marker=marker, mode=mode)
        window = width if window is None else window
        for name, v in (("width", width), ("window", window)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name}={v!r}: must be a positive integer")
        self.marker, self.mode, self.width, self.window = marker, mode, int(width), int(window)
        self.table = ByteTable(tokenizer) if table is None else table

    def references(self, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return reference_table(answers, self.mode, self.width)

    def extract(self, ids: jax.Array, length: jax.Array):
        stream, total = self.table.byte_stream(ids, length)
        buf, n, found = extract_answer(stream, total, marker=self.marker, width=self.window)
        buf, n = normalize_bytes(buf, n, mode=self.mode)
        return buf, n, found

    def __call__(self, ids: jax.Array, length: jax.Array, ref: jax.Array,
                 ref_len: jax.Array) -> tuple[jax.Array, jax.Array]:
        stream, total = self.table.byte_stream(ids, length)
        correct, found = answer_match(stream, total, ref, ref_len, marker=self.marker,
                                      mode=self.mode, window=self.window)
        return correct.astype(jnp.float32), found

    def format(self, ids: jax.Array, length: jax.Array) -> jax.Array:
        return format_reward(*self.table.byte_stream(ids, length))
