"""Text-diversity metrics on padded token arrays, exact and jittable.

N-grams are compared position by position (no hashing, so no collisions): for
windows of length n, `ngram_match` builds the [T, S] table of equal windows
from the token equality table, costing O(n T S) elementwise work. That is
fine for the response lengths of RL fine-tuning (hundreds to a few thousand).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp


def _shift(x: jax.Array, k: int, axes: tuple[int, ...]) -> jax.Array:
    """x[i + k] along each of `axes`, padded with False past the end."""
    for ax in axes:
        if k >= x.shape[ax]:
            return jnp.zeros_like(x)
        pad = [(0, 0)] * x.ndim
        pad[ax] = (0, k)
        x = jnp.pad(jax.lax.slice_in_dim(x, k, x.shape[ax], axis=ax), pad)
    return x


def window_valid(mask_t: jax.Array, n: int) -> jax.Array:
    """[T] bool: the n-gram starting at t lies entirely inside the mask."""
    ok = mask_t.astype(bool)
    out = ok
    for k in range(1, n):  # a running AND, not a stack: n can be 40 and T in the thousands
        out = out & _shift(ok, k, (0,))
    return out


def ngram_match(a_t: jax.Array, mask_a: jax.Array, b_s: jax.Array, mask_b: jax.Array, n: int) -> jax.Array:
    """[T, S] bool: a[i:i+n] == b[j:j+n], both windows valid."""
    eq = a_t[:, None] == b_s[None, :]
    match = eq
    for k in range(1, n):
        match = match & _shift(eq, k, (0, 1))
    return match & window_valid(mask_a, n)[:, None] & window_valid(mask_b, n)[None, :]


def repeated_ngram_starts(tokens_t: jax.Array, mask_t: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """([T] repeated, [T] valid): the valid n-gram at t also starts at some s < t."""
    match = ngram_match(tokens_t, mask_t, tokens_t, mask_t, n)
    earlier = jnp.tril(match, k=-1)
    return earlier.any(-1), window_valid(mask_t, n)


def _check_tokens(tokens: jax.Array, mask: jax.Array, n: int, name: str = "n") -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"{name}={n!r}: must be a positive integer")
    chex.assert_rank([tokens, mask], 2)
    chex.assert_equal_shape([tokens, mask])


def rep_n(tokens: jax.Array, mask: jax.Array, *, n: int = 4) -> jax.Array:
    """Rep-n = 1 - |unique n-grams| / |n-grams| per response (Welleck et al. 2019,
    "Neural Text Generation with Unlikelihood Training").

    tokens, mask: [B, T]. Returns [B]; 0 for a response shorter than n.
    """
    _check_tokens(tokens, mask, n)
    return _rep_n(tokens, mask, n)


# Compiled once per shape: eager dispatch of the O(n) small ops is slow.
@functools.partial(jax.jit, static_argnums=2)
def _rep_n(tokens, mask, n):
    def one(tok_t, m_t):
        repeated, valid = repeated_ngram_starts(tok_t, m_t, n)
        total = valid.sum()
        unique = (valid & ~repeated).sum()
        return jnp.where(total > 0, 1.0 - unique / jnp.maximum(total, 1), 0.0)

    return jax.vmap(one)(tokens, mask)


def _clipped_precision(hyp_t, hyp_m, refs_rt, refs_m, ref_ok_r, n):
    """(clipped matches, hyp n-gram count) of BLEU's modified n-gram precision."""
    valid = window_valid(hyp_m, n)
    count_h = ngram_match(hyp_t, hyp_m, hyp_t, hyp_m, n).sum(-1)
    count_r = jax.vmap(lambda r, m: ngram_match(hyp_t, hyp_m, r, m, n).sum(-1))(refs_rt, refs_m)
    max_ref = jnp.where(ref_ok_r[:, None], count_r, 0).max(0)
    # Each distinct n-gram occurs count_h times, so min(count_h, max_ref) / count_h per occurrence
    # adds up to BLEU's clipped count.
    clipped = jnp.where(valid, jnp.minimum(count_h, max_ref) / jnp.maximum(count_h, 1), 0.0).sum()
    return clipped, valid.sum()


@functools.partial(jax.jit, static_argnames=("max_n", "smooth"))
def sentence_bleu(hyp_t, hyp_m, refs_rt, refs_m, ref_ok_r, *, max_n: int = 4, smooth: float = 0.0) -> jax.Array:
    """BLEU-max_n of one hypothesis [T] against the references [R, T] with `ref_ok_r`.

    Papineni et al. 2002 with uniform weights; brevity penalty against the
    reference length closest to the hypothesis (ties: the shorter). With
    smooth = 0 any zero n-gram precision gives 0; smooth = e > 0 replaces a
    zero match count by e (NLTK's method1). No unigram match always gives 0.
    """
    c = hyp_m.sum()
    log_p = []
    unigram_hits = None
    for k in range(1, max_n + 1):
        hits, total = _clipped_precision(hyp_t, hyp_m, refs_rt, refs_m, ref_ok_r, k)
        unigram_hits = hits if k == 1 else unigram_hits
        num = jnp.where(hits > 0, hits, smooth)
        log_p.append(jnp.log(jnp.maximum(num, 1e-30)) - jnp.log(jnp.maximum(total, 1)))
        if smooth == 0:
            log_p[-1] = jnp.where(hits > 0, log_p[-1], -jnp.inf)
    ref_len = refs_m.sum(-1)
    # Closest reference length, ties broken towards the shorter one.
    key = jnp.where(ref_ok_r, jnp.abs(ref_len - c) * (2 * refs_m.shape[-1] + 2) + ref_len, jnp.iinfo(jnp.int32).max)
    r = ref_len[jnp.argmin(key)]
    bp = jnp.where(c > r, 1.0, jnp.exp(1.0 - r / jnp.maximum(c, 1)))
    bleu = bp * jnp.exp(jnp.stack(log_p).mean())
    return jnp.where((c > 0) & (unigram_hits > 0), bleu, 0.0)


def self_bleu(tokens: jax.Array, mask: jax.Array, group_size: int, *, max_n: int = 4,
              smooth: float = 0.0) -> jax.Array:
    """Self-BLEU (Zhu et al. 2018, Texygen): BLEU of each response against the
    other responses of its group, averaged over all responses. Higher = less diverse.

    tokens, mask: [B, T] with B / group_size contiguous groups. Returns a scalar.
    """
    _check_tokens(tokens, mask, max_n, "max_n")
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size={group_size!r}: Self-BLEU needs at least 2 responses per group")
    if tokens.shape[0] % group_size:
        raise ValueError(f"group_size={group_size} must divide the batch size {tokens.shape[0]}")
    if not smooth >= 0:
        raise ValueError(f"smooth={smooth!r}: must be >= 0")
    return _self_bleu(tokens, mask, group_size, max_n, float(smooth))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _self_bleu(tokens, mask, group_size, max_n, smooth):
    tok_gkt = tokens.reshape(-1, group_size, tokens.shape[-1])
    m_gkt = mask.astype(bool).reshape(tok_gkt.shape)
    others_kk = ~jnp.eye(group_size, dtype=bool)

    def group(tok_kt, m_kt):
        return jax.vmap(lambda h, hm, ok: sentence_bleu(h, hm, tok_kt, m_kt, ok, max_n=max_n, smooth=smooth))(
            tok_kt, m_kt, others_kk)

    return jax.vmap(group)(tok_gkt, m_gkt).mean()
