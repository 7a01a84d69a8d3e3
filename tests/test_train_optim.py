"""Optimizers and the frozen reference policy, each checked against a
reference written by hand in float64 numpy (the optimizer formulas from the
papers) on top of plain jax.grad, with the engine on a 2x2x2 mesh and 2
micro-batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.config import OptimSection
from jaxrl_lm.losses import kl_penalty
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.engine import Engine
from jaxrl_lm.train.optim import make_optimizer
from tests.test_train_engine import ce_loss, host, toy_batch, toy_model

LR, WD, B1, B2, EPS, CLIP = 0.05, 0.1, 0.9, 0.99, 1e-8, 1.0


def grads_at(params64: dict, batch: dict, loss=ce_loss) -> dict:
    """float64 gradient of the batch token mean, via a model that holds params64."""
    model = toy_model()
    graphdef, _ = nnx.split(model, nnx.Param)
    p32 = nnx.State({k: nnx.Param(jnp.asarray(v, jnp.float32)) for k, v in params64.items()})

    def mean(p):
        (s, d), _ = loss(nnx.merge(graphdef, p), batch)
        return s / d

    g = jax.grad(mean)(p32)
    return {k: np.asarray(v.value if hasattr(v, "value") else v, np.float64) for k, v in g.items()}


def clip(g: dict) -> dict:
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    return {k: x * min(1.0, CLIP / norm) for k, x in g.items()}


def rms(x):
    return np.sqrt((x ** 2).mean())


def reference_run(name: str, batches) -> dict:
    """Two steps of clip-by-global-norm then `name`, all in float64 numpy."""
    p = {k: np.asarray(v.value, np.float64) for k, v in nnx.state(toy_model(), nnx.Param).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, batch in enumerate(batches, start=1):
        g = clip(grads_at(p, batch))
        for k in p:
            if name == "adamw":  # Loshchilov & Hutter 2019, bias-corrected moments
                m[k] = B1 * m[k] + (1 - B1) * g[k]
                v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
                u = (m[k] / (1 - B1 ** t)) / (np.sqrt(v[k] / (1 - B2 ** t)) + EPS)
                p[k] = p[k] - LR * (u + WD * p[k])
            elif name == "lion":  # Chen et al. 2023: sign of an interpolation, then EMA
                u = np.sign(B1 * m[k] + (1 - B1) * g[k])
                m[k] = B2 * m[k] + (1 - B2) * g[k]
                p[k] = p[k] - LR * (u + WD * p[k])
            else:  # Shazeer & Stern 2018; arrays < 128 wide are not factored
                decay = 1 - t ** -0.8
                v[k] = decay * v[k] + (1 - decay) * (g[k] ** 2 + 1e-30)
                u = g[k] / np.sqrt(v[k])
                u = u / max(1.0, rms(u))  # update clipping at threshold 1
                u = u * max(rms(p[k]), 1e-3)  # relative step size
                p[k] = p[k] - LR * (u + WD * p[k])
    return p


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion"])
def test_optimizer_matches_hand_written_reference(name):
    cfg = OptimSection(name=name, lr=LR, schedule="constant", b1=B1, b2=B2, eps=EPS,
                       weight_decay=WD, max_grad_norm=CLIP)
    opt, sched = make_optimizer(cfg, 10)
    eng = Engine(toy_model(), ce_loss, opt, sched, mesh_lib.make_mesh((2, 2, 2)), micro_batches=2)
    batches = [toy_batch(s) for s in (4, 5)]
    state = eng.init_state()
    for b in batches:
        state, metrics = eng.step(state, eng.place_batch(b))
        assert float(metrics["finite"]) == 1.0
    want = reference_run(name, batches)
    got = host(state.params)
    moved = max(np.abs(want[k] - np.asarray(nnx.state(toy_model(), nnx.Param)[k].value)).max()
                for k in want)
    assert moved > 1e-3  # the two steps did change the params
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k].value if hasattr(got[k], "value") else got[k]),
                                   want[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")


BETA = 0.3


def nll_plus_kl(model, batch, ref_model):
    """Masked next-token NLL + BETA * k3 KL to the reference, summed, and its count."""
    logits = model(batch["tokens"][:, :-1])
    tgt, mask = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)[..., 0]
    ref = jnp.take_along_axis(jax.nn.log_softmax(ref_model(batch["tokens"][:, :-1])),
                              tgt[..., None], -1)[..., 0]
    per_tok = -logp + BETA * kl_penalty(logp, ref, "k3", mask=mask)
    return ((per_tok * mask).sum(), mask.sum()), {}


def test_frozen_reference_params_for_kl():
    """The KL term sees the reference model (another seed), only the policy
    moves, and the reference arrays are neither updated nor donated."""
    batch = toy_batch(7)
    ref_model = toy_model(seed=1)
    cfg = OptimSection(name="lion", lr=LR, schedule="constant", b1=B1, b2=B2, weight_decay=0.0)
    opt, sched = make_optimizer(cfg, 10)
    eng = Engine(toy_model(), nll_plus_kl, opt, sched, mesh_lib.make_mesh((2, 2, 2)), micro_batches=2)
    ref_params = mesh_lib.place(nnx.state(ref_model, nnx.Param), eng.param_sh)
    ref_before = host(ref_params)
    state, m = eng.step(eng.init_state(), eng.place_batch(batch), ref_params=ref_params)

    # reference: float64 numpy k3 with the reference log-probs as constants
    tok, mask = batch["tokens"], batch["loss_mask"][:, 1:].astype(np.float64)

    def token_logp(model):
        lg = np.asarray(model(jnp.asarray(tok[:, :-1])), np.float64)
        lp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
        return np.take_along_axis(lp, tok[:, 1:, None], -1)[..., 0]

    logp, ref = token_logp(toy_model()), token_logp(ref_model)
    d = ref - logp
    want = ((-logp + BETA * (np.exp(d) - 1 - d)) * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)

    # the first Lion step is -lr * sign(grad): the grad must be the policy-only one
    ref_const = jnp.asarray(ref, jnp.float32)

    def loss_policy_only(model, b):
        logits = model(b["tokens"][:, :-1])
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), b["tokens"][:, 1:, None], -1)[..., 0]
        mk = b["loss_mask"][:, 1:]
        per = -lp + BETA * kl_penalty(lp, ref_const, "k3", mask=mk)
        return (per * mk).sum(), mk.sum()

    p0 = {k: np.asarray(v.value, np.float64) for k, v in nnx.state(toy_model(), nnx.Param).items()}
    g = grads_at(p0, batch, loss=lambda mdl, b: (loss_policy_only(mdl, b), {}))
    for k, x in host(state.params).items():
        got = np.asarray(x.value if hasattr(x, "value") else x)
        np.testing.assert_allclose(got, p0[k] - LR * np.sign(g[k]), rtol=1e-6, atol=1e-7, err_msg=k)

    # frozen: a second step reuses the same (undonated, unchanged) reference arrays
    state, m2 = eng.step(state, eng.place_batch(batch), ref_params=ref_params)
    assert float(m2["loss"]) < float(m["loss"])
    for a, b in zip(jax.tree.leaves(ref_before), jax.tree.leaves(host(ref_params))):
        assert np.array_equal(a, b)
