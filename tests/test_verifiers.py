"""jaxrl_lm/verifiers.py: answer extraction, normalisation, matching and the
format reward on token ids, in jit, against plain-Python references written
here (extraction, format) and the host `normalize_answer`, with the embedded
character tokenizer and a byte-level BPE trained here (multi-character tokens,
and tokens holding part of a UTF-8 character)."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.verifiers import (MARKERS, MODES, ByteTable, Verifier, answer_match,
                                extract_answer, format_reward, normalize_answer,
                                normalize_bytes, reference_table)

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


# --- hand-worked cases --------------------------------------------------------------

@functools.cache
def _extract_jit(tok_name, marker, mode, width):
    tok = TOKENIZERS[tok_name]()
    return jit(Verifier(tok, marker=marker, mode=mode, width=width,
                        table=table_of(tok_name)).extract)


def extract(text, marker, mode="exact", width=24, tok_name="char"):
    ids, length = to_ids(TOKENIZERS[tok_name](), text, 96)
    buf, n, found = _extract_jit(tok_name, marker, mode, width)(jnp.asarray(ids),
                                                                jnp.int32(length))
    return (bytes(np.asarray(buf)[: int(n)]).decode() if bool(found) else None)


@pytest.mark.parametrize("tok_name", ["char", "bpe"])
@pytest.mark.parametrize("marker,mode,text,expected", [
    ("####", "exact", "so 5 #### 7 then #### 1,234. done", "1,234."),
    ("####", "number", "so 5 #### 7 then #### 1,234. done", "1234"),
    ("####", "number", "####\n  -0042.500\n", "-42.5"),
    ("####", "number", "#### $ 3", ""),            # the run is "$", found; it normalises to ""
    ("####", "exact", "no marker here 42", None),
    ("####", "exact", "ends with ####   ", None),
    ("####", "exact", "##### 5", "5"),
    ("boxed", "exact", "\\boxed{1} so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("boxed", "exact", "\\boxed{ {a{b}c} } x", "{a{b}c}"),
    ("boxed", "number", "\\boxed{ 1,000 }", "1000"),
    ("boxed", "exact", "\\boxed{\\frac{1}{2}", None),   # unmatched
    ("boxed", "exact", "\\boxed{1} \\boxed{", None),   # the last one is unclosed
    ("boxed", "exact", "\\boxed 5 and \\boxed {6}", None),
    ("boxed", "exact", "\\boxed{}", None),             # empty
    ("answer_tag", "exact", "<answer>1</answer> <answer> 42 </answer>", "42"),
    ("answer_tag", "exact", "<answer>\n  x y </answer>", "x y"),
    ("answer_tag", "exact", "<answer>1</answer> <answer> 42 ", None),
    ("answer_tag", "exact", "</answer><answer>", None),
    ("answer_tag", "exact", "<answer>  </answer>", None),
    ("answer_tag", "number", "<answer>+$12.</answer>", "12"),
])
def test_hand_extraction(tok_name, marker, mode, text, expected):
    assert extract(text, marker, mode, tok_name=tok_name) == expected


def test_too_long_is_not_found():
    assert extract("#### 12345", "####", width=5) == "12345"
    assert extract("#### 123456", "####", width=5) is None
    assert extract("<answer>  12345  </answer>", "answer_tag", width=5) == "12345"


@pytest.mark.parametrize("tok_name", ["char", "bpe"])
def test_bytes_after_length_are_ignored(tok_name):
    tok, table = TOKENIZERS[tok_name](), table_of(tok_name)
    for marker, text, want, want_all in [("####", "#### 12", "12", "123"),
                                         ("answer_tag", "<answer>5", None, "53 }"),
                                         ("boxed", "\\boxed{5", None, "53")]:
        ids = encode(tok, text)
        cut = len(ids)
        ids = jnp.asarray(ids + encode(tok, "3 }</answer>"), jnp.int32)
        run = jit(lambda ids, length, marker=marker: extract_answer(
            *table.byte_stream(ids, length), marker=marker, width=8))
        for length, expected in [(cut, want), (len(ids), want_all)]:
            buf, n, found = run(ids, jnp.int32(length))
            got = bytes(np.asarray(buf)[: int(n)]).decode() if bool(found) else None
            assert got == expected, (marker, length, got)


def test_byte_stream_ignores_unknown_ids():
    table = table_of("char")
    tok = char_tok()
    ids = encode(tok, "ab")
    v = int(table.token_nbytes.shape[0])
    stream, total = jit(table.byte_stream)(jnp.asarray([ids[0], -1, v, v + 7, ids[1], 0]), 5)
    assert int(total) == 2
    assert bytes(np.asarray(stream)[:2]) == b"ab"
    assert not np.asarray(stream)[2:].any()


@functools.cache
def _normalize_jit(mode):
    return jit(functools.partial(normalize_bytes, mode=mode))


@pytest.mark.parametrize("s,expected", [
    ("$1,234.50", "1234.5"), ("+007.", "7"), ("-0.00", "0"), ("-0", "0"), ("1/2", "1/2"),
    ("1e3", "1e3"), ("-.5", "-.5"), (".5", ".5"), ("12..", "12."), ("0", "0"), ("000", "0"),
    ("-00.100", "-0.1"), ("1 234", "1234"), ("3.0", "3"), ("3.", "3"), ("+-5", "-5"),
    ("1.2.3", "1.2.3"), ("", ""), ("+", ""), ("$", ""), ("x 1", "x1"), ("1.50.", "1.5"),
])
def test_normalize_number_hand(s, expected):
    assert normalize_answer(s, "number") == expected
    b = s.encode()
    buf, n = _normalize_jit("number")(
        jnp.asarray(list(b) + [0] * (32 - len(b)), jnp.uint8), jnp.int32(len(b)))
    assert bytes(np.asarray(buf)[: int(n)]) == expected.encode()
    assert not np.asarray(buf)[int(n):].any()


def test_normalize_exact_hand():
    assert normalize_answer(" \t x  y\n", "exact") == "x  y"
    assert normalize_answer(" 1,0 ", "exact") == "1,0"


def test_reference_table():
    table, lengths = reference_table(["1,234", " x ", "-0.50"], "number", 6)
    assert lengths.tolist() == [4, 1, 4]
    assert bytes(table[0, :4]) == b"1234" and bytes(table[2, :4]) == b"-0.5"
    assert not table[0, 4:].any()
    with pytest.raises(ValueError, match=r"reference answer 1 .*more than width=6"):
        reference_table(["1", "1234567"], "number", 6)
    with pytest.raises(ValueError, match=r"reference answer 2 .*empty"):
        reference_table(["1", "2", " $ "], "number", 6)
    with pytest.raises(ValueError, match="mode"):
        reference_table(["1"], "numbers", 6)


def test_bad_arguments():
    tok = char_tok()
    with pytest.raises(ValueError, match="marker"):
        Verifier(tok, marker="ANSWER:", table=table_of("char"))
    with pytest.raises(ValueError, match="mode"):
        Verifier(tok, mode="float", table=table_of("char"))
    with pytest.raises(ValueError, match="width"):
        Verifier(tok, width=0, table=table_of("char"))


@functools.cache
def _format_jit(tok_name):
    return jit(Verifier(TOKENIZERS[tok_name](), table=table_of(tok_name)).format)


@pytest.mark.parametrize("text,expected", [
    ("<think>a</think><answer>1</answer>", 1.0),
    ("<think>\nwork\n</think>\n  <answer> 42 </answer>", 1.0),
    ("prefix <think></think><answer></answer> suffix", 1.0),
    ("<think>a</think> x <answer>1</answer>", 0.0),          # text between
    ("<answer>1</answer><think>a</think>", 0.0),              # wrong order
    ("<think>a</think><answer>1", 0.0),                       # unclosed answer
    ("<think>a<answer>1</answer>", 0.0),                      # no </think>
    ("a</think><answer>1</answer>", 0.0),                     # no <think>
    ("</think><think><answer>1</answer>", 0.0),               # </think> before <think>
    ("<think>a</think> x </think><answer>1</answer>", 1.0),   # a later </think> works
    ("<think>a</think><answer>1</answer><answer>", 1.0),
    ("<think>a</think><answer></answer", 0.0),
    ("", 0.0),
])
@pytest.mark.parametrize("tok_name", ["char", "bpe"])
def test_format_reward_hand(tok_name, text, expected):
    assert py_format(text) == expected  # the reference agrees with the hand answer
    tok = TOKENIZERS[tok_name]()
    ids, length = to_ids(tok, text, 96)
    assert float(_format_jit(tok_name)(jnp.asarray(ids), jnp.int32(length))) == expected


def test_verifier_reward_and_references():
    tok = char_tok()
    v = Verifier(tok, marker="####", mode="number", width=8, window=16,
                 table=table_of("char"))
    refs, ref_lens = v.references(["1234", "7"])
    ids, length = to_ids(tok, "so #### $1,234.00", 64)
    call = jit(v)
    r, f = call(jnp.asarray(ids), jnp.int32(length), refs[0], ref_lens[0])
    assert (float(r), bool(f)) == (1.0, True) and r.dtype == jnp.float32
    r, f = call(jnp.asarray(ids), jnp.int32(length), refs[1], ref_lens[1])
    assert (float(r), bool(f)) == (0.0, True)
    ids, length = to_ids(tok, "so 1234", 64)
    r, f = call(jnp.asarray(ids), jnp.int32(length), refs[0], ref_lens[0])
    assert (float(r), bool(f)) == (0.0, False)
    # A prefix of the reference is not a match, nor is the reference plus more.
    for text in ["#### 123", "#### 12345", "#### 1234x"]:
        ids, length = to_ids(tok, text, 64)
        assert float(call(jnp.asarray(ids), jnp.int32(length), refs[0], ref_lens[0])[0]) == 0.0


def test_answer_match_wider_window_than_reference():
    tok = char_tok()
    table = table_of("char")
    refs, ref_lens = reference_table(["1234"], "number", 4)
    ids, length = to_ids(tok, "#### 1,234.000", 64)

    def match(ids, length, ref, ref_len, window):
        stream, total = table.byte_stream(ids, length)
        return answer_match(stream, total, ref, ref_len, marker="####", mode="number",
                            window=window)

    run = jit(match, static_argnums=4)
    ok, found = run(jnp.asarray(ids), jnp.int32(length), refs[0], ref_lens[0], None)
    assert not bool(found) and not bool(ok)  # 9 bytes before normalisation > 4
    ok, found = run(jnp.asarray(ids), jnp.int32(length), refs[0], ref_lens[0], 16)
    assert bool(found) and bool(ok)


def test_vmap_compiles_once():
    tok = bpe_tok()
    v = Verifier(tok, marker="answer_tag", mode="number", width=8, table=table_of("bpe"))
    traces = []

    def batch(ids, lengths, refs, ref_lens):
        traces.append(1)
        reward, found = jax.vmap(v)(ids, lengths, refs, ref_lens)
        return reward, found, jax.vmap(v.format)(ids, lengths)

    f, one = jit(batch), jit(v)
    answers = ["42", "-3", "1000", "2.5"]
    refs, ref_lens = v.references(answers)
    for texts, want_reward, want_found, want_fmt in [
        (["<think>x</think><answer>42</answer>", "<answer> -3.0 </answer>",
          "<answer>1,000</answer>", "<answer>2.5"],
         [1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]),
        (["<answer>41</answer>", "no answer", "<think></think>\n<answer>$1000.</answer>",
          "<answer>2.50</answer><answer>3</answer>"],
         [0, 0, 1, 0], [1, 0, 1, 1], [0, 0, 1, 0]),
    ]:
        rows = [to_ids(tok, t, 48) for t in texts]
        ids = jnp.asarray(np.stack([r[0] for r in rows]))
        lengths = jnp.asarray([r[1] for r in rows], jnp.int32)
        reward, found, fmt = f(ids, lengths, refs, ref_lens)
        assert reward.tolist() == want_reward
        assert found.tolist() == [bool(x) for x in want_found]
        assert fmt.tolist() == want_fmt
        # Row by row, unbatched, the same.
        for i in range(len(texts)):
            r, fd = one(ids[i], lengths[i], refs[i], ref_lens[i])
            assert (float(r), bool(fd)) == (reward[i], found[i])
    assert len(traces) == 1


def test_bpe_has_split_characters():
    """The BPE below really splits characters into byte tokens (decoding to
    U+FFFD alone) and has multi-character tokens: the property test covers both."""
    tok, table = bpe_tok(), table_of("bpe")
    ids = encode(tok, "π")
    assert len(ids) == 2 and all("\ufffd" in tok.decode([i]) for i in ids)
    assert max(int(n) for n in np.asarray(table.token_nbytes)) >= 4
    stream, total = table.byte_stream(jnp.asarray(ids), jnp.int32(2))
    assert bytes(np.asarray(stream)[: int(total)]) == "π".encode()


# --- property tests: jitted vs the Python references ------------------------------

@functools.cache
def checker(tok_name: str):
    tok, table = TOKENIZERS[tok_name](), table_of(tok_name)
    combos = [(marker, mode) for marker in MARKERS for mode in MODES]
    verifiers = [Verifier(tok, marker=marker, mode=mode, width=REF_WIDTH, window=WINDOW,
                          table=table) for marker, mode in combos]

    def run(ids, length, refs, ref_lens):
        stream, total = table.byte_stream(ids, length)
        raw = {m: extract_answer(stream, total, marker=m, width=WINDOW) for m in MARKERS}
        out = []
        for (marker, mode), v, ref, ref_len in zip(combos, verifiers, refs, ref_lens):
            buf, n, found = raw[marker]
            norm, norm_n = normalize_bytes(buf, n, mode=mode)
            reward, found_v = v(ids, length, ref, ref_len)
            out.append((buf, n, found, norm, norm_n, reward, found_v))
        return stream, total, out, format_reward(stream, total)

    return tok, combos, jit(run)


def check_text(tok_name: str, text: str, alt: str):
    tok, combos, run = checker(tok_name)
    ids, length = to_ids(tok, text)
    decoded = host_text(tok, ids, length)  # what the ids say (char: <unk> for non-ASCII)
    expected = {}
    refs = np.zeros((len(combos), REF_WIDTH), np.uint8)
    ref_lens = np.zeros((len(combos),), np.int32)
    for i, (marker, mode) in enumerate(combos):
        ans = py_extract(decoded, marker, WINDOW)
        norm = None if ans is None else normalize_answer(ans.decode("utf-8"), mode).encode()
        # The reference: the right answer when there is one, else `alt`.
        ref_text = norm.decode() if norm else alt
        r, rl = reference_table([ref_text], mode, REF_WIDTH)
        refs[i], ref_lens[i] = r[0], rl[0]
        expected[marker, mode] = (ans, norm, ans is not None and norm == r[0, : rl[0]].tobytes())
    stream, total, out, fmt = run(jnp.asarray(ids), jnp.int32(length), jnp.asarray(refs),
                                  jnp.asarray(ref_lens))
    stream = np.asarray(stream)
    assert bytes(stream[: int(total)]) == decoded.encode("utf-8")
    assert not stream[int(total):].any()
    assert float(fmt) == py_format(decoded), decoded
    for (marker, mode), (buf, n, found, norm, norm_n, reward, found_v) in zip(combos, out):
        ans, want_norm, want_correct = expected[marker, mode]
        ctx = (decoded, marker, mode)
        assert bool(found) == (ans is not None) == bool(found_v), ctx
        buf, norm = np.asarray(buf), np.asarray(norm)
        if ans is None:
            assert int(n) == 0 and not buf.any(), ctx
            assert float(reward) == 0.0, ctx
            continue
        assert bytes(buf[: int(n)]) == ans and not buf[int(n):].any(), ctx
        assert bytes(norm[: int(norm_n)]) == want_norm and not norm[int(norm_n):].any(), ctx
        assert float(reward) == float(want_correct), ctx


def templated(parts) -> str:
    """A completion in the <think>/<answer> layout, possibly spoilt by `sep`."""
    think, sep, answer, tail = parts
    return f"<think>{think}</think>{sep}<answer>{answer}</answer>{tail}"


SEPS = ["", " ", "\n \t", " x"]
short = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)
texts = st.one_of(st.lists(st.sampled_from(PIECES), max_size=18).map("".join),
                  st.tuples(short, st.sampled_from(SEPS), short, short).map(templated))
alts = st.sampled_from(["42", "-3", "1234", "x", "\\frac{1}{2}", "7", "0"])


@pytest.mark.parametrize("tok_name", ["char", "bpe"])
@settings(max_examples=200, derandomize=True, deadline=None)
@given(text=texts, alt=alts)
def test_jitted_matches_python_reference(tok_name, text, alt):
    check_text(tok_name, text, alt)


def test_reference_sees_every_outcome():
    """The property test's strings reach found and not found, right and wrong,
    for every marker (checked on a fixed sample, so the test cannot pass
    vacuously)."""
    rng = np.random.default_rng(0)
    seen = set()
    def pieces(k):
        return "".join(rng.choice(PIECES, size=rng.integers(0, k + 1)))

    for i in range(600):
        if i % 2:
            text = pieces(18)
        else:
            text = templated((pieces(5), SEPS[rng.integers(len(SEPS))], pieces(5), pieces(5)))
        for marker in MARKERS:
            ans = py_extract(text, marker, WINDOW)
            seen.add((marker, ans is not None))
        seen.add(("format", py_format(text)))
    assert seen >= {(m, f) for m in MARKERS for f in (True, False)} | {
        ("format", 1.0), ("format", 0.0)}


@settings(max_examples=300, derandomize=True, deadline=None)
@given(s=st.text(alphabet="0123456789-+.,$ \t\nxé/", max_size=14),
       mode=st.sampled_from(MODES))
def test_normalize_bytes_matches_host(s, mode):
    b = s.encode()
    width = 32
    buf, n = _normalize_jit(mode)(jnp.asarray(list(b) + [0] * (width - len(b)), jnp.uint8),
                                  jnp.int32(len(b)))
    buf = np.asarray(buf)
    assert bytes(buf[: int(n)]) == normalize_answer(s, mode).encode(), s
    assert not buf[int(n):].any()
