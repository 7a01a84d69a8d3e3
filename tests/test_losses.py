"""Losses against float64 numpy references written from the formulas, hand-worked
cases, sign conventions, masking, jit/vmap, and exact micro-batch accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxrl_lm import losses as L

RTOL, ATOL = 2e-5, 2e-6


def _batch(seed, b=4, t=6, spread=0.3):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.1, 3.0, (b, t))
    old = logp + rng.normal(0, spread, (b, t))
    adv = rng.normal(0, 1, (b, t))
    lens = rng.integers(1, t + 1, b)
    mask = np.arange(t)[None] < lens[:, None]
    if b > 2:
        mask[2] = False  # one fully padded row
    return logp, old, adv, mask


# ---------------------------------------------------------------- references

def ref_aggregate(l, m, mode, max_len=None):
    l, m = np.asarray(l, np.float64), np.asarray(m, bool)
    if mode == "token-mean":
        return l[m].sum() / max(m.sum(), 1)
    rows = []
    for b in range(l.shape[0]):
        if not m[b].any():
            continue
        s = l[b][m[b]].sum()
        if mode == "seq-mean-token-mean":
            s /= m[b].sum()
        elif mode == "seq-mean-token-sum-norm":
            s /= max_len if max_len else l.shape[1]
        rows.append(s)
    return float(np.mean(rows)) if rows else 0.0


def ref_ppo_per_token(logp, old, adv, m, clip_low, clip_high, dual_clip, ratio_level):
    logp, old, adv = (np.asarray(x, np.float64) for x in (logp, old, adv))
    ch = clip_low if clip_high is None else clip_high
    out = np.zeros_like(logp)
    for b in range(logp.shape[0]):
        if ratio_level != "token" and m[b].any():
            s = np.exp(np.mean((logp[b] - old[b])[m[b]]))
        for t in range(logp.shape[1]):
            if not m[b, t]:
                continue
            r = np.exp(logp[b, t] - old[b, t]) if ratio_level == "token" else s
            a = adv[b, t]
            obj = min(r * a, min(max(r, 1 - clip_low), 1 + ch) * a)
            if dual_clip is not None and a < 0:
                obj = max(obj, dual_clip * a)
            out[b, t] = -obj
    return out


# ---------------------------------------------------------------- aggregate

@pytest.mark.parametrize("mode", L.AGG_MODES)
def test_aggregate_matches_reference(mode):
    logp, _, adv, mask = _batch(0, b=5, t=7)
    for max_len in (None, 11):
        if max_len and mode != "seq-mean-token-sum-norm":
            continue
        got = L.aggregate(jnp.asarray(adv, jnp.float32), jnp.asarray(mask), mode, max_len=max_len)
        np.testing.assert_allclose(got, ref_aggregate(adv, mask, mode, max_len), rtol=RTOL, atol=ATOL)


def test_aggregate_hand_worked():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    m = jnp.array([[1, 1, 1], [1, 0, 0]])
    assert np.isclose(L.aggregate(x, m, "token-mean"), 10.0 / 4)
    assert np.isclose(L.aggregate(x, m, "seq-mean-token-mean"), (2.0 + 4.0) / 2)
    assert np.isclose(L.aggregate(x, m, "seq-mean-token-sum"), (6.0 + 4.0) / 2)
    assert np.isclose(L.aggregate(x, m, "seq-mean-token-sum-norm", max_len=5), (6.0 / 5 + 4.0 / 5) / 2)


def test_aggregate_nan_padding_is_ignored_in_value_and_grad():
    x = jnp.array([[1.0, jnp.nan], [2.0, jnp.inf]])
    m = jnp.array([[True, False], [True, False]])
    for mode in L.AGG_MODES:
        v, g = jax.value_and_grad(lambda y: L.aggregate(y, m, mode))(x)
        assert np.isfinite(v) and np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[~np.asarray(m)] == 0)


def test_bad_options_raise():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="agg='mean'"):
        L.aggregate(x, x, "mean")
    with pytest.raises(ValueError, match="max_len"):
        L.aggregate(x, x, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match="ratio_level='seq'"):
        L.ppo_policy_loss(x, x, x, x, ratio_level="seq")
    with pytest.raises(ValueError, match="dual_clip=0.5"):
        L.ppo_policy_loss(x, x, x, x, dual_clip=0.5)
    with pytest.raises(ValueError, match="clip_low=-0.1"):
        L.ppo_policy_loss(x, x, x, x, clip_low=-0.1)
    with pytest.raises(ValueError, match="kind='k4'"):
        L.kl_penalty(x, x, "k4")
    v = jnp.zeros(3)
    with pytest.raises(ValueError, match="loss_type='kto'"):
        L.dpo_loss(v, v, v, v, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        L.dpo_loss(v, v, v, v, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="chosen_len, rejected_len"):
        L.dpo_loss(v, v, v, v, chosen_len=v)
    with pytest.raises(ValueError, match="clip=0"):
        L.value_loss(x, x, x, x, clip=0)


# ---------------------------------------------------------------- PPO / GSPO

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), clip_low=st.sampled_from([0.1, 0.2]),
       clip_high=st.sampled_from([None, 0.28]), dual_clip=st.sampled_from([None, 3.0]),
       ratio_level=st.sampled_from(L.RATIO_LEVELS), agg=st.sampled_from(L.AGG_MODES))
def test_ppo_matches_reference(seed, clip_low, clip_high, dual_clip, ratio_level, agg):
    logp, old, adv, mask = _batch(seed, spread=0.5)
    f = jax.jit(functools.partial(L.ppo_policy_loss, clip_low=clip_low, clip_high=clip_high,
                                  dual_clip=dual_clip, ratio_level=ratio_level, agg=agg))
    got, _ = f(*(jnp.asarray(x, jnp.float32) for x in (logp, old, adv)), jnp.asarray(mask))
    per_tok = ref_ppo_per_token(logp, old, adv, mask, clip_low, clip_high, dual_clip, ratio_level)
    np.testing.assert_allclose(got, ref_aggregate(per_tok, mask, agg), rtol=1e-4, atol=1e-5)


def test_ppo_hand_worked_and_metrics():
    # Four tokens: ratios e^0.5, e^-0.5, e^0.1, e^3 with advantages 1, -1, 2, -1.
    lr = np.array([[0.5, -0.5, 0.1, 3.0]])
    adv = jnp.array([[1.0, -1.0, 2.0, -1.0]])
    logp = jnp.asarray(lr - 1.0, jnp.float32)
    old = jnp.full((1, 4), -1.0)
    m = jnp.ones((1, 4), bool)
    loss, met = L.ppo_policy_loss(logp, old, adv, m, clip_low=0.2, clip_high=0.3, dual_clip=5.0)
    r = np.exp(lr[0])
    expected = [-1.3, 0.8, -2 * r[2], min(r[3], 5.0)]  # clipped high, clipped low, free, dual-clipped
    assert np.isclose(loss, np.mean(expected), rtol=1e-5)
    assert np.isclose(met["clip_frac_high"], 0.25) and np.isclose(met["clip_frac_low"], 0.25)
    assert np.isclose(met["dual_clip_frac"], 0.25)
    assert np.isclose(met["ratio_max"], r.max(), rtol=1e-5) and np.isclose(met["ratio_mean"], r.mean(), rtol=1e-5)
    assert np.isclose(met["approx_kl"], np.mean(np.exp(-lr[0]) + lr[0] - 1), rtol=1e-5)
    # An all-padding micro-batch: loss 0 and finite metrics, not NaN / -inf.
    loss, met = L.ppo_policy_loss(logp, old, adv, jnp.zeros((1, 4), bool))
    assert loss == 0 and all(np.isfinite(v) for v in met.values())


def test_negative_advantage_above_clip_keeps_its_gradient():
    # Ratio 1.5 > 1 + eps with A = -1: the unclipped term -A r is the larger loss, so
    # d loss / d logp = -A r = 1.5 (one token, token-mean). A positive advantage at
    # the same ratio is clipped and gets exactly zero.
    old = jnp.zeros((1, 2))
    logp = jnp.log(jnp.array([[1.5, 1.5]]))
    m = jnp.ones((1, 2), bool)
    g = jax.grad(lambda lp: L.ppo_policy_loss(lp, old, jnp.array([[-1.0, 1.0]]), m)[0])(logp)
    np.testing.assert_allclose(g, [[1.5 / 2, 0.0]], rtol=1e-6)
    # Symmetric case: A > 0 with ratio below 1 - eps keeps its gradient too.
    logp = jnp.log(jnp.array([[0.5]]))
    g = jax.grad(lambda lp: L.ppo_policy_loss(lp, old[:, :1], jnp.array([[1.0]]), m[:, :1])[0])(logp)
    np.testing.assert_allclose(g, [[-0.5]], rtol=1e-6)


def test_ppo_gradient_matches_analytic_reference():
    logp, old, adv, mask = _batch(3, spread=0.4)
    ch, cl, c = 0.28, 0.2, 3.0
    g = jax.grad(lambda lp: L.ppo_policy_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                                              jnp.asarray(mask), clip_low=cl, clip_high=ch, dual_clip=c)[0])(
        jnp.asarray(logp, jnp.float32))
    r = np.exp(logp - old)
    unclipped_active = ((adv > 0) & (r <= 1 + ch)) | ((adv < 0) & (r >= 1 - cl))
    unclipped_active &= ~((adv < 0) & (r > c))  # the dual clip is a constant
    ref = np.where(mask & unclipped_active, -adv * r, 0.0) / mask.sum()
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-7)


def test_masked_tokens_give_zero_finite_gradient():
    logp, old, adv, mask = _batch(5)
    logp = np.where(mask, logp, 80.0)  # exp(80 - old) overflows float32 if it leaks
    old = np.where(mask, old, -80.0)
    for level in L.RATIO_LEVELS:
        for agg in L.AGG_MODES:
            g = jax.grad(lambda lp: L.ppo_policy_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                                                      jnp.asarray(mask), ratio_level=level, agg=agg)[0])(
                jnp.asarray(logp, jnp.float32))
            assert np.all(np.isfinite(g)), (level, agg)
            assert np.all(np.asarray(g)[~mask] == 0), (level, agg)


def test_gspo_token_gradient_equals_gspo_for_sequence_advantages():
    # GSPO paper: with one advantage per sequence the two forms share the gradient.
    logp, old, _, mask = _batch(7, spread=0.01)
    adv_b = np.random.default_rng(1).normal(size=4)
    args = (jnp.asarray(old, jnp.float32), jnp.asarray(adv_b, jnp.float32), jnp.asarray(mask))

    def grad(level):
        return jax.grad(lambda lp: L.ppo_policy_loss(lp, *args, ratio_level=level, clip_low=3e-3,
                                                     agg="seq-mean-token-mean")[0])(jnp.asarray(logp, jnp.float32))

    np.testing.assert_allclose(grad("sequence"), grad("sequence-token"), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad("sequence"))).max() > 0


def test_jit_and_vmap_agree_with_eager():
    logp, old, adv, mask = (jnp.asarray(x) for x in _batch(11))
    logp, old, adv = (x.astype(jnp.float32) for x in (logp, old, adv))
    f = functools.partial(L.ppo_policy_loss, clip_high=0.28, ratio_level="sequence", agg="seq-mean-token-sum")
    eager, _ = f(logp, old, adv, mask)
    jitted, _ = jax.jit(f)(logp, old, adv, mask)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    # vmap over a leading axis of 3 batches == looping
    stack = lambda x: jnp.stack([x, x[::-1], jnp.roll(x, 1, axis=0)])  # noqa: E731
    batched, _ = jax.vmap(f)(stack(logp), stack(old), stack(adv), stack(mask))
    loop = [f(stack(logp)[i], stack(old)[i], stack(adv)[i], stack(mask)[i])[0] for i in range(3)]
    np.testing.assert_allclose(batched, loop, rtol=1e-6)


# ---------------------------------------------------------------- accumulation

def _accumulation_cases():
    v = jnp.linspace(-1, 1, 8)
    yield "dpo", lambda s, **k: L.dpo_loss(*(jnp.roll(v, i)[s] for i in range(4)), **k)
    yield "simpo", lambda s, **k: L.simpo_loss(v[s], -v[s], jnp.arange(1, 9)[s], jnp.arange(8, 0, -1)[s], **k)
    yield "rpo", lambda s, **k: L.rpo_loss(v[s], -v[s], 0.5 * v[s], v[s] ** 2, jnp.arange(1, 9)[s], **k)


@pytest.mark.parametrize("agg", L.AGG_MODES)
@pytest.mark.parametrize("k", [2, 4])
def test_micro_batch_sums_reproduce_full_batch_exactly(agg, k):
    logp, old, adv, mask = (jnp.asarray(x) for x in _batch(13, b=8, t=5))
    mask = mask.at[5].set(False)
    vals = jnp.asarray(np.random.default_rng(2).normal(size=(8, 5)), jnp.float32)
    losses = {
        "ppo": lambda s, **kw: L.ppo_policy_loss(logp[s], old[s], adv[s], mask[s], agg=agg, max_len=9, **kw),
        "gspo": lambda s, **kw: L.ppo_policy_loss(logp[s], old[s], adv[s], mask[s], agg=agg,
                                                  ratio_level="sequence", **kw),
        "value": lambda s, **kw: L.value_loss(vals[s], 0.9 * vals[s], adv[s], mask[s], clip=0.05, agg=agg, **kw),
    }
    if agg == "token-mean":
        losses.update(dict(_accumulation_cases()))
    n = 8 // k
    for name, f in losses.items():
        full, _ = f(slice(None))
        parts = [f(slice(i * n, (i + 1) * n), return_sum=True)[0] for i in range(k)]
        total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        np.testing.assert_allclose(total, full, rtol=1e-6, atol=1e-7, err_msg=name)
        (s_full, d_full), _ = f(slice(None), return_sum=True)
        np.testing.assert_allclose(s_full / d_full, full, rtol=1e-6, err_msg=name)
    (_, d), _ = losses["ppo"](slice(None), return_sum=True)
    expected_denom = mask.sum() if agg == "token-mean" else (mask.sum(1) > 0).sum()
    assert d == expected_denom


# ---------------------------------------------------------------- value, KL, entropy

def test_value_loss_matches_reference():
    rng = np.random.default_rng(4)
    v, vo, ret = rng.normal(size=(3, 3, 5))
    m = rng.random((3, 5)) > 0.3
    for clip in (None, 0.2):
        got, met = L.value_loss(*(jnp.asarray(x, jnp.float32) for x in (v, vo, ret)), jnp.asarray(m), clip=clip)
        e1 = (v - ret) ** 2
        e2 = (vo + np.clip(v - vo, -clip, clip) - ret) ** 2 if clip else e1
        np.testing.assert_allclose(got, 0.5 * np.maximum(e1, e2)[m].mean(), rtol=RTOL)
        if clip:
            changed = np.abs(v - vo) > clip
            assert 0 < changed[m].sum() < m.sum()
            np.testing.assert_allclose(met["vf_clip_frac"], changed[m].mean(), rtol=RTOL)


def test_value_clip_frac_is_zero_when_nothing_is_clipped():
    """|v - v_old| < c everywhere: the clipped value is v itself, so clip_frac is
    exactly 0 and the loss is the unclipped one. The baselines form
    v_old + clip(v - v_old, -c, c) is off from v by an ulp on many tokens
    (where v - v_old is not exact: values near 0, as small rewards give)."""
    rng = np.random.default_rng(11)
    v64 = rng.normal(0, 0.1, (8, 64))
    v, vo = (jnp.asarray(x, jnp.float32) for x in (v64, v64 + rng.uniform(-0.1, 0.1, (8, 64))))
    ret = jnp.asarray(rng.normal(0, 0.1, (8, 64)), jnp.float32)
    m = jnp.asarray(rng.random((8, 64)) > 0.2)
    old_form = vo + jnp.clip(v - vo, -0.2, 0.2)
    assert float(jnp.mean(old_form != v)) > 0.1  # what the old metric counted
    got, met = L.value_loss(v, vo, ret, m, clip=0.2)
    assert float(met["vf_clip_frac"]) == 0.0
    e = (np.asarray(v, np.float64) - np.asarray(ret, np.float64)) ** 2
    np.testing.assert_allclose(got, 0.5 * e[np.asarray(m)].mean(), rtol=RTOL)


def test_value_loss_clipping_hand_worked():
    """c = 0.5, five valid tokens and a padded one:
        v     v_old  R    clipped v   (v-R)^2  (clip-R)^2  max
        1.0   0.0    2.0  0.5         1.0      2.25        2.25   clipped, counts
        2.0   2.1    0.0  2.0         4.0      4.0         4.0
        0.5   0.5    1.0  0.5         0.25     0.25        0.25
        3.0   2.0    3.0  2.5         0.0      0.25        0.25   clipped
        1.0   0.0    0.0  0.5         1.0      0.25        1.0    clipped, v's error wins
    loss = 0.5 * 7.75 / 5 = 0.775, vf_clip_frac = 3/5."""
    cols = np.array([[1.0, 0.0, 2.0], [2.0, 2.1, 0.0], [0.5, 0.5, 1.0], [3.0, 2.0, 3.0],
                     [1.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    v, vo, ret = (jnp.asarray(cols[None, :, i], jnp.float32) for i in range(3))
    m = jnp.asarray([[1, 1, 1, 1, 1, 0]])
    got, met = L.value_loss(v, vo, ret, m, clip=0.5)
    # float64 reference from the formula
    v64, vo64, r64 = (cols[:5, i] for i in range(3))
    ref = 0.5 * np.maximum((v64 - r64) ** 2, (np.clip(v64, vo64 - 0.5, vo64 + 0.5) - r64) ** 2).mean()
    assert ref == 0.775
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    np.testing.assert_allclose(met["vf_clip_frac"], 0.6, rtol=RTOL)
    # the gradient flows through v where its own error is the larger or nothing is clipped
    g = jax.grad(lambda x: L.value_loss(x, vo, ret, m, clip=0.5)[0])(v)
    np.testing.assert_allclose(g, [[0.0, 2.0 / 5, -0.5 / 5, 0.0, 1.0 / 5, 0.0]], atol=1e-7)


def test_kl_estimators_match_reference():
    rng = np.random.default_rng(5)
    logp, ref = -rng.uniform(0.1, 4, (2, 3, 6))
    d = ref - logp
    expected = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.exp(d) - d - 1}
    for kind, want in expected.items():
        np.testing.assert_allclose(L.kl_penalty(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32), kind),
                                   want, rtol=1e-5, atol=1e-6)
    # k3 is nonnegative and unbiased on samples: E_pi[k3] = KL(pi || ref) for a categorical.
    p = np.array([0.5, 0.3, 0.2]); q = np.array([0.2, 0.2, 0.6])
    lp, lq = jnp.log(jnp.asarray(p)), jnp.log(jnp.asarray(q))
    for kind in ("k1", "k3"):
        est = (p * np.asarray(L.kl_penalty(lp, lq, kind))).sum()
        np.testing.assert_allclose(est, (p * np.log(p / q)).sum(), rtol=1e-5)
    m = jnp.array([[True, False]])
    g = jax.grad(lambda x: L.kl_penalty(x, jnp.array([[0.0, 200.0]]), "k3", mask=m).sum())(jnp.zeros((1, 2)))
    assert np.all(np.isfinite(g)) and g[0, 1] == 0


def test_entropy_matches_reference_and_masks():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 3, 7)) * 3
    logits[0, 0, :3] = -np.inf  # top-k filtered entries
    p = np.exp(logits - logits.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = -np.where(p > 0, p * np.log(p), 0).sum(-1)
    m = np.ones((2, 3), bool); m[1, 2] = False
    got = L.entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(m))
    np.testing.assert_allclose(got, np.where(m, want, 0), rtol=1e-5, atol=1e-6)
    bad = jnp.asarray(logits, jnp.float32).at[1, 2].set(-jnp.inf)
    g = jax.grad(lambda x: L.entropy(x, jnp.asarray(m)).sum())(bad)
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------- preference

def _logsig(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("loss_type", L.DPO_LOSS_TYPES)
@pytest.mark.parametrize("normalise", [False, True])
def test_dpo_matches_reference(loss_type, normalise):
    rng = np.random.default_rng(8)
    w, l, rw, rl = -rng.uniform(5, 40, (4, 6))
    nw, nl = rng.integers(3, 20, (2, 6))
    beta = 0.3
    eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    kw = dict(chosen_len=jnp.asarray(nw), rejected_len=jnp.asarray(nl)) if normalise else {}
    got, met = L.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (w, l, rw, rl)), beta=beta,
                          loss_type=loss_type, label_smoothing=eps, **kw)
    if normalise:
        w, rw, l, rl = w / nw, rw / nw, l / nl, rl / nl
    h = (w - rw) - (l - rl)
    z = beta * h
    want = {
        "sigmoid": -(1 - eps) * _logsig(z) - eps * _logsig(-z),
        "robust": (-(1 - eps) * _logsig(z) + eps * _logsig(-z)) / (1 - 2 * eps),
        "hinge": np.maximum(0, 1 - z),
        "ipo": (h - 1 / (2 * beta)) ** 2,
    }[loss_type]
    np.testing.assert_allclose(got, want.mean(), rtol=1e-5)
    np.testing.assert_allclose(met["reward_margin"], np.mean(beta * (w - rw) - beta * (l - rl)), rtol=1e-5)
    np.testing.assert_allclose(met["reward_accuracy"], np.mean(z > 0))


def test_dpo_hand_worked():
    # h = 0: sigmoid loss log 2, IPO (1/(2 beta))^2, hinge 1.
    z = jnp.zeros(2)
    assert np.isclose(L.dpo_loss(z, z, z, z)[0], np.log(2))
    assert np.isclose(L.dpo_loss(z, z, z, z, loss_type="ipo", beta=0.5)[0], 1.0)
    assert np.isclose(L.dpo_loss(z, z, z, z, loss_type="hinge")[0], 1.0)


def test_simpo_and_rpo_match_reference():
    rng = np.random.default_rng(9)
    w, l, rw, rl = -rng.uniform(5, 40, (4, 5))
    nw, nl = rng.integers(3, 20, (2, 5))
    got, _ = L.simpo_loss(jnp.asarray(w), jnp.asarray(l), jnp.asarray(nw), jnp.asarray(nl), beta=2.0, gamma=0.7)
    np.testing.assert_allclose(got, np.mean(-_logsig(2.0 * w / nw - 2.0 * l / nl - 0.7)), rtol=1e-5)
    got, met = L.rpo_loss(*(jnp.asarray(x) for x in (w, l, rw, rl, nw)), beta=0.1, alpha=0.5)
    dpo = -_logsig(0.1 * ((w - rw) - (l - rl)))
    np.testing.assert_allclose(got, np.mean(dpo + 0.5 * (-w / nw)), rtol=1e-5)
    np.testing.assert_allclose(met["nll"], np.mean(-w / nw), rtol=1e-5)
