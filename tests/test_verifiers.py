"""jaxrl_lm/verifiers.py: answer extraction, normalisation, matching and the
format reward on token ids, in jit, on hand-worked cases with the embedded
character tokenizer and a byte-level BPE trained here. Generated strings
against plain-Python references: tests/test_verifiers_property.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.verifiers import (Verifier, answer_match, extract_answer, normalize_answer,
                                reference_table)
from tests.verifier_refs import (TOKENIZERS, bpe_tok, char_tok, jit, normalize_jit, py_format,
                                 table_of, to_ids)

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


@pytest.mark.parametrize("s,expected", [
    ("$1,234.50", "1234.5"), ("+007.", "7"), ("-0.00", "0"), ("-0", "0"), ("1/2", "1/2"),
    ("1e3", "1e3"), ("-.5", "-.5"), (".5", ".5"), ("12..", "12."), ("0", "0"), ("000", "0"),
    ("-00.100", "-0.1"), ("1 234", "1234"), ("3.0", "3"), ("3.", "3"), ("+-5", "-5"),
    ("1.2.3", "1.2.3"), ("", ""), ("+", ""), ("$", ""), ("x 1", "x1"), ("1.50.", "1.5"),
])
def test_normalize_number_hand(s, expected):
    assert normalize_answer(s, "number") == expected
    b = s.encode()
    buf, n = normalize_jit("number")(
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
