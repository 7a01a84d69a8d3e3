"""Decision and text metrics against plain-Python references (loops, Counters)
and hand-worked cases."""

import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_lm import metrics as M


# ---------------------------------------------------------------- decision

def ref_decision(actions, rewards, K):
    """(coverage[t], greedy fraction, frequency-bias fraction) by direct bookkeeping."""
    counts, sums, cov, greedy, freq, n = {}, {}, [], 0, 0, 0
    for a, r in zip(actions, rewards):
        if counts:
            n += 1
            means = {k: sums[k] / counts[k] for k in counts}
            best = max(means.values())
            top = max(counts.values())
            is_greedy = a in means and means[a] == best
            greedy += is_greedy
            freq += (a in counts and counts[a] == top) and not is_greedy
        if 0 <= a < K:
            counts[a] = counts.get(a, 0) + 1
            sums[a] = sums.get(a, 0.0) + r
        cov.append(len(counts) / K)
    return np.array(cov), (greedy / n if n else 0.0), (freq / n if n else 0.0)


def test_decision_metrics_match_reference():
    rng = np.random.default_rng(0)
    K, B, T = 4, 16, 12
    actions = rng.integers(-1, K, (B, T))  # -1: an unparsable answer
    rewards = rng.integers(0, 3, (B, T)).astype(np.float32)  # small integers: many ties
    cov = M.action_coverage(jnp.asarray(actions), K)
    g = jax.jit(M.greediness, static_argnums=2)(jnp.asarray(actions), jnp.asarray(rewards), K)
    f = M.frequency_bias(jnp.asarray(actions), jnp.asarray(rewards), K)
    for b in range(B):
        c_ref, g_ref, f_ref = ref_decision(actions[b], rewards[b], K)
        np.testing.assert_allclose(cov[b], c_ref, rtol=1e-6)
        np.testing.assert_allclose(g[b], g_ref, rtol=1e-6)
        np.testing.assert_allclose(f[b], f_ref, rtol=1e-6)


def test_decision_metrics_hand_worked():
    # Arms 0,0,1,0,2 with rewards 1,0,1,0,0 (K=3).
    # t=1: means {0: 1} -> a=0 greedy.  t=2: {0: .5}, a=1 untried: neither.
    # t=3: {0: .5, 1: 1}, a=0 most frequent (2) not greedy -> frequency.
    # t=4: {0: 1/3, 1: 1}, a=2 untried: neither.
    a = jnp.array([0, 0, 1, 0, 2]); r = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0])
    assert np.isclose(M.greediness(a, r, 3), 1 / 4)
    assert np.isclose(M.frequency_bias(a, r, 3), 1 / 4)
    np.testing.assert_allclose(M.action_coverage(a, 3), [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
    mu = jnp.array([0.2, 0.5, 0.9])
    np.testing.assert_allclose(M.cumulative_regret(a, mu), np.cumsum([0.7, 0.7, 0.4, 0.7, 0.0]), rtol=1e-6)
    # Masked steps count for nothing.
    m = jnp.array([True, True, True, False, True])
    np.testing.assert_allclose(M.cumulative_regret(a, mu, mask=m), np.cumsum([0.7, 0.7, 0.4, 0.0, 0.0]), rtol=1e-6)


def test_regret_broadcasts_per_episode_means():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, (5, 7)); mu = rng.random((5, 3))
    want = np.cumsum(mu.max(-1, keepdims=True) - np.take_along_axis(mu, a, -1), -1)
    np.testing.assert_allclose(M.cumulative_regret(jnp.asarray(a), jnp.asarray(mu, jnp.float32)), want, rtol=1e-5)


# ---------------------------------------------------------------- text

def ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def ref_bleu(hyp, refs, max_n=4, smooth=0.0):
    if not hyp:
        return 0.0
    logs, hits1 = [], None
    for n in range(1, max_n + 1):
        h = Counter(ngrams(hyp, n))
        best = Counter()
        for ref in refs:
            for g, c in Counter(ngrams(ref, n)).items():
                best[g] = max(best[g], c)
        hits = sum(min(c, best[g]) for g, c in h.items())
        hits1 = hits if n == 1 else hits1
        total = max(sum(h.values()), 1)
        if hits == 0 and smooth == 0:
            return 0.0
        logs.append(math.log((hits if hits else smooth) / total))
    if hits1 == 0:
        return 0.0
    r = min((len(x) for x in refs), key=lambda L: (abs(L - len(hyp)), L))
    bp = 1.0 if len(hyp) > r else math.exp(1 - r / len(hyp))
    return bp * math.exp(sum(logs) / max_n)


def _random_texts(seed, B, T, vocab):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, T + 1, B)
    toks = rng.integers(0, vocab, (B, T))
    toks[1] = toks[0]  # an exact duplicate pair
    lens[1] = lens[0] = T
    mask = np.arange(T)[None] < lens[:, None]
    seqs = [list(toks[b, :lens[b]]) for b in range(B)]
    return toks, mask, seqs


@pytest.mark.parametrize("smooth", [0.0, 0.1])
def test_self_bleu_matches_reference(smooth):
    toks, mask, seqs = _random_texts(2, 8, 10, 3)
    G = 4
    got = M.self_bleu(jnp.asarray(toks), jnp.asarray(mask), G, smooth=smooth)
    per = [ref_bleu(seqs[i], [seqs[j] for j in range(len(seqs)) if j // G == i // G and j != i], smooth=smooth)
           for i in range(len(seqs))]
    assert max(per) > 0.9 and min(per) < max(per)  # the case exercises both ends
    np.testing.assert_allclose(got, np.mean(per), rtol=1e-5)


def test_bleu_hand_worked():
    # Identical sequences: BLEU 1. Hypothesis a prefix of length 4 of a length-8 reference:
    # all precisions 1, brevity penalty exp(1 - 8/4).
    ref = jnp.arange(8)[None]; full = jnp.ones((1, 8), bool)
    ok = jnp.array([True])
    assert np.isclose(M.sentence_bleu(jnp.arange(8), full[0], ref, full, ok), 1.0)
    pre = jnp.arange(8) < 4
    assert np.isclose(M.sentence_bleu(jnp.arange(8), pre, ref, full, ok), math.exp(-1.0), rtol=1e-6)


def test_rep_n_matches_reference():
    toks, mask, seqs = _random_texts(3, 6, 12, 2)
    for n in (1, 2, 4):
        got = M.rep_n(jnp.asarray(toks), jnp.asarray(mask), n=n)
        want = [1 - len(set(ngrams(s, n))) / len(ngrams(s, n)) if len(s) >= n else 0.0 for s in seqs]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Hand-worked: "a b a b a" has 2-grams ab ba ab ba -> 2 unique of 4 -> 0.5.
    np.testing.assert_allclose(M.rep_n(jnp.array([[0, 1, 0, 1, 0]]), jnp.ones((1, 5)), n=2), [0.5])


def test_bad_arguments_raise():
    x = jnp.zeros((4, 3), jnp.int32)
    with pytest.raises(ValueError, match="group_size=1"):
        M.self_bleu(x, x, 1)
    with pytest.raises(ValueError, match="group_size=3 must divide"):
        M.self_bleu(x, x, 3)
    with pytest.raises(ValueError, match="n=0"):
        M.rep_n(x, x, n=0)
    with pytest.raises(ValueError, match="num_actions=0"):
        M.action_coverage(x, 0)
