"""Mixed precision with float32 master weights (model.master_dtype): the
engine keeps float32 params and optimizer state for a bfloat16 model, the
forward sees bfloat16, one step equals a hand-computed update, a few steps stay
close to an all-float32 run, and without the master copy small updates are lost."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrl_lm.config import ConfigError, OptimSection, load_config
from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.decoder import Decoder
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.engine import Engine
from jaxrl_lm.train.optim import make_optimizer

BASE = dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2)
BF16 = dict(param_dtype="bfloat16", dtype="bfloat16")
MASTER = dict(BF16, master_dtype="float32")
U = 2.0 ** -8  # bfloat16 unit roundoff (8 significand bits)


def batch(b=4, t=12):
    return {"tokens": jnp.asarray(np.random.default_rng(0).integers(0, 32, (b, t)), jnp.int32)}


def nll_loss(model, batch, seen=None):
    tokens = batch["tokens"]
    if seen is not None:  # dtypes of the params this forward computes with (at trace)
        seen.update({model.embed[...].dtype, model.layers.q_proj[...].dtype,
                     model.final_norm[...].dtype})
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    logp = jax.nn.log_softmax(model(tokens, positions)[:, :-1])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return (nll.sum(), jnp.float32(nll.size)), {}


def one_device_mesh():
    return mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def start_values():
    """One set of starting weights for every run: a bfloat16 model's init, so the
    float32 reference and the bfloat16 runs begin at exactly the same values."""
    init = nnx.state(Decoder(ModelConfig(**BASE, **BF16), rngs=nnx.Rngs(0)), nnx.Param)
    return jax.tree.map(lambda x: x.astype(jnp.float32), init)


def train(optimizer, steps, seen=None, **dtypes):
    model = Decoder(ModelConfig(**BASE, **dtypes), rngs=nnx.Rngs(0))
    loss = lambda m, b: nll_loss(m, b, seen)  # noqa: E731
    eng = Engine(model, loss, optimizer, optax.constant_schedule(0.0), one_device_mesh())
    own = nnx.state(model, nnx.Param)
    state = eng.init_state(0, params=jax.tree.map(lambda x, o: x.astype(o.dtype),
                                                  start_values(), own))
    for _ in range(steps):
        state, metrics = eng.step(state, batch())
        assert float(metrics["finite"]) == 1.0
    return eng, state


def flat(tree):
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])


def test_master_copy_and_optimizer_state_are_float32_forward_sees_bfloat16():
    seen = set()
    opt, _ = make_optimizer(OptimSection(name="adamw", lr=1e-3), 10)
    eng, state = train(opt, 1, seen=seen, **MASTER)
    assert eng.master_dtype == "float32"
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.float32)}
    assert seen == {jnp.dtype(jnp.bfloat16)}
    views = eng.model_params(state.params)
    assert {x.dtype for x in jax.tree.leaves(views)} == {jnp.dtype(jnp.bfloat16)}
    # without the option: bfloat16 params and moments, updated in place
    seen.clear()
    eng, state = train(opt, 1, seen=seen, **BF16)
    assert eng.master_dtype is None and seen == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}


def test_one_step_equals_a_hand_computed_master_update():
    """Reference: the gradient of the summed loss w.r.t. the bfloat16 params (the
    forward run directly on bf16(master)), cast to float32, divided by the token
    count (the engine's exact-accumulation rule); master' = master - lr * g in
    float32. The two programs compute the same bfloat16 gradient, but XLA may
    keep excess precision (skip a bfloat16 rounding) at different places in
    each, so the step D = master' - master agrees to about one bfloat16
    rounding of the gradient: ||D - D_ref|| <= u ||D_ref||, u = 2**-8
    (measured 0.42u on XLA:CPU); a bfloat16 master would lose ~15% of it."""
    lr = 1e-2
    _, state = train(optax.sgd(lr), 1, **MASTER)
    model = Decoder(ModelConfig(**BASE, **BF16), rngs=nnx.Rngs(0))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    p0 = start_values()
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p0)

    def loss_sum(p):
        (s, n), _ = nll_loss(nnx.merge(graphdef, p, rest), batch())
        return s, n

    g, n = jax.jit(jax.grad(loss_sum, has_aux=True))(p16)
    assert {x.dtype for x in jax.tree.leaves(g)} == {jnp.dtype(jnp.bfloat16)}
    want = jax.tree.map(lambda p, g: p + (g.astype(jnp.float32) / n) * -lr, p0, g)
    d, d_ref = flat(state.params) - flat(p0), flat(want) - flat(p0)
    assert np.linalg.norm(d_ref) > 0
    assert np.linalg.norm(d - d_ref) <= U * np.linalg.norm(d_ref)


def test_master_weights_track_float32_and_bfloat16_in_place_loses_updates():
    """Five SGD steps at lr 1e-4: updates are ~1e-9..1e-4, mostly below half a
    bfloat16 spacing of their weight (2**-9 |w|: ~4e-5 at the init scale 0.02,
    2e-3 for the norm weights at 1), so bfloat16 params updated in place keep
    almost none of them. The float32 master keeps them all; its only difference
    from the all-float32 run is the gradient, computed by a bfloat16 forward on
    bfloat16 weights: a relative error of a few bfloat16 roundings, u = 2**-8
    each. Bound: ||D_master - D_f32|| <= 4u ||D_f32|| for the total parameter
    change D (measured ~1.1u); a bfloat16 copy misses it by ~0.97."""
    opt = optax.sgd(1e-4)
    p0 = flat(start_values())
    _, ref = train(opt, 5)  # float32 params and compute
    _, master = train(opt, 5, **MASTER)
    _, inplace = train(opt, 5, **BF16)
    d_ref = flat(ref.params) - p0
    def err(state):
        return np.linalg.norm(flat(state.params) - p0 - d_ref) / np.linalg.norm(d_ref)
    assert err(master) <= 4 * U, err(master)
    assert err(inplace) > 0.5, err(inplace)
    # the norm weights (1.0 at init, updates ~1e-7) move in float32 and in the master,
    # not in place (half a bfloat16 spacing at 1.0 is 2**-9)
    norms = lambda s: np.asarray(s.params["layers"]["attn_norm"][...], np.float32)  # noqa: E731
    assert np.any(norms(ref) != 1.0) and np.any(norms(master) != 1.0)
    assert np.all(norms(inplace) == 1.0)


def test_master_dtype_validation_and_float16_refused():
    with pytest.raises(ValueError, match=r"ModelConfig.master_dtype='float32': needs "
                                         r"param_dtype='bfloat16'"):
        ModelConfig(**BASE, master_dtype="float32")
    with pytest.raises(ValueError, match=r"ModelConfig.master_dtype='bfloat16': must be None "
                                         r"or one of float32"):
        ModelConfig(**BASE, param_dtype="bfloat16", master_dtype="bfloat16")
    for field in ("dtype", "param_dtype"):
        with pytest.raises(ValueError, match=rf"ModelConfig.{field}='float16': must be one of "
                                             r"float32, bfloat16"):
            ModelConfig(**BASE, **{field: "float16"})
        with pytest.raises(ConfigError, match=rf"model.{field}='float16': must be one of "
                                              r"float32, bfloat16"):
            load_config(None, [f"--model.{field}", "float16"])
    with pytest.raises(ConfigError, match=r"model.master_dtype='float32': needs "
                                          r"model.param_dtype: bfloat16"):
        load_config(None, ["--model.master_dtype", "float32"])
    with pytest.raises(ConfigError, match=r"model.master_dtype='float16': must be one of float32"):
        load_config(None, ["--model.param_dtype", "bfloat16", "--model.master_dtype", "float16"])
    assert load_config(None).model.master_dtype is None


def test_config_builds_a_master_weight_engine():
    from jaxrl_lm.train.trainer import build_policy

    cfg = load_config(None, ["--model.param_dtype", "bfloat16", "--model.master_dtype", "float32"])
    model, _ = build_policy(cfg)
    assert model.config.master_dtype == "float32"
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.bfloat16)}
    opt, sched = make_optimizer(cfg.optim, 10)
    eng = Engine(model, nll_loss, opt, sched, one_device_mesh())  # reads model.config
    state = eng.init_state(0)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    # the master equals the bfloat16 params it was made from
    np.testing.assert_array_equal(flat(state.params), flat(nnx.state(model, nnx.Param)))


def test_export_writes_the_models_param_dtype_not_the_master_copy(tmp_path):
    """With a float32 master copy of bfloat16 params, the exported HF folder
    holds bfloat16 tensors, as its config.json says (float32 ones without the cast)."""
    import json

    from safetensors import safe_open

    from jaxrl_lm.train.trainer import build_policy, export_hf

    cfg = load_config(None, ["--model.param_dtype", "bfloat16", "--model.master_dtype", "float32"])
    model, tok = build_policy(cfg)
    master = jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param))
    export_hf(master, model, tok, str(tmp_path / "hf"))
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "bfloat16"
