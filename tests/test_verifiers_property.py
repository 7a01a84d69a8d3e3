"""jaxrl_lm/verifiers.py against plain-Python references on generated
strings (hypothesis, derandomized): every marker and mode's extraction,
normalisation and reward, and the format reward, jitted on token ids of both
tokenizers, must equal what the references find in the decoded text; and
`normalize_bytes` must equal the host `normalize_answer`."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_lm.verifiers import (MARKERS, MODES, Verifier, extract_answer, format_reward,
                                normalize_answer, normalize_bytes, reference_table)
from tests.verifier_refs import (PIECES, REF_WIDTH, TOKENIZERS, WINDOW, host_text, jit,
                                 normalize_jit, py_extract, py_format, table_of, to_ids)

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
    buf, n = normalize_jit(mode)(jnp.asarray(list(b) + [0] * (width - len(b)), jnp.uint8),
                                  jnp.int32(len(b)))
    buf = np.asarray(buf)
    assert bytes(buf[: int(n)]) == normalize_answer(s, mode).encode(), s
    assert not buf[int(n):].any()
