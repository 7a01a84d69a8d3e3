"""Train step: 1 device vs a 2x2x2 mesh, partition specs from the rule table,
exact micro-batch accumulation, the non-finite guard (on the loss, gradients
and the update), the skip streak that stops a run, reference params."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrl_lm.config import ConfigError, OptimSection
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.engine import Engine, NonFiniteError, SkipStreak
from jaxrl_lm.train.optim import make_optimizer

V, D, H, T = 16, 8, 16, 6


class ToyLM(nnx.Module):
    """Embedding -> MLP -> unembedding, every param named with logical axes."""

    def __init__(self, rngs: nnx.Rngs):
        part = nnx.with_partitioning
        init = nnx.initializers.normal(0.5)
        self.embed = nnx.Param(part(init, ("vocab", "embed"))(rngs.params(), (V, D)))
        self.w_in = nnx.Param(part(init, ("embed", "mlp"))(rngs.params(), (D, H)))
        self.b_in = nnx.Param(part(nnx.initializers.zeros, ("mlp",))(rngs.params(), (H,)))
        self.w_out = nnx.Param(part(init, ("mlp", "embed"))(rngs.params(), (H, D)))
        self.unembed = nnx.Param(part(init, ("embed", "vocab"))(rngs.params(), (D, V)))

    def __call__(self, tokens_bt):
        x = self.embed[...][tokens_bt]
        x = x + jnp.tanh(x @ self.w_in[...] + self.b_in[...]) @ self.w_out[...]
        return x @ self.unembed[...]


def toy_model(seed=0):
    with nnx.use_eager_sharding(False):
        return ToyLM(nnx.Rngs(seed))


def ce_loss(model, batch):
    """Next-token cross-entropy summed over masked targets, and its count."""
    logits = model(batch["tokens"][:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tgt = batch["tokens"][:, 1:]
    nll = -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0]
    mask = batch["loss_mask"][:, 1:]
    metrics = {"mask_frac": mask.mean(), "nll_mean": (nll * mask).sum() / jnp.maximum(mask.sum(), 1),
               "nll_max": jnp.max(jnp.where(mask > 0, nll, -jnp.inf), initial=0.0),
               "loss_tokens": mask.sum()}
    return ((nll * mask).sum(), mask.sum()), metrics


def toy_batch(seed=0, b=8):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (b, T)).astype(np.int32)
    # unequal token counts per row, so micro-batches hold different counts
    lengths = rng.integers(2, T + 1, (b,))
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    mask[:, 0] = 0
    return {"tokens": tokens, "loss_mask": mask}


def engine(shape=(1, 1, 1), k=1, name="adamw", loss=ce_loss, devices=None, model=None):
    devices = jax.devices()[: np.prod(shape)] if devices is None else devices
    mesh = mesh_lib.make_mesh(shape, devices=devices)
    opt, sched = make_optimizer(OptimSection(name=name, lr=0.05, warmup_steps=1), 10)
    return Engine(model or toy_model(), loss, opt, sched, mesh, micro_batches=k)


def host(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def run(eng, batches, seed=0):
    state = eng.init_state(seed)
    losses = []
    for b in batches:
        state, m = eng.step(state, eng.place_batch(b))
        losses.append(float(m["loss"]))
    return state, losses


def test_mesh_errors():
    with pytest.raises(ConfigError, match="jax.device_count"):
        mesh_lib.make_mesh((3, 1, 1))
    with pytest.raises(ConfigError, match="at most one|do not divide"):
        mesh_lib.make_mesh((-1, 3, 1))
    assert mesh_lib.make_mesh((-1, 2, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh_lib.make_mesh((1, -1, 1), devices=jax.devices()[:1]).size == 1


def test_partition_specs_follow_rule_table():
    eng = engine((2, 2, 2))
    state = eng.init_state()
    names = {"embed": ("vocab", "embed"), "w_in": ("embed", "mlp"), "b_in": ("mlp",),
             "w_out": ("mlp", "embed"), "unembed": ("embed", "vocab")}
    # written from the table in the docs: vocab/mlp -> tensor, embed -> fsdp
    expected = {"embed": P("tensor", "fsdp"), "w_in": P("fsdp", "tensor"), "b_in": P("tensor"),
                "w_out": P("tensor", "fsdp"), "unembed": P("fsdp", "tensor")}
    for key, var in state.params.items():
        assert var.get_metadata()["out_sharding"] == names[key]
        assert var.value.sharding.spec == expected[key], key
        for table_name in names[key]:
            assert table_name in mesh_lib.RULES
    # optimizer moments follow their parameter
    mu = state.opt_state[1][0].mu
    for key, var in mu.items():
        assert var.value.sharding.spec == expected[key]


def test_logical_to_mesh_drops_axes_that_do_not_divide():
    mesh = mesh_lib.make_mesh((2, 2, 2))
    assert mesh_lib.logical_to_mesh(("vocab", "embed"), (15, 8), mesh) == P(None, "fsdp")
    assert mesh_lib.logical_to_mesh(("batch", "length"), (8, 3), mesh) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="logical axis 'bogus' has no rule"):
        mesh_lib.logical_to_mesh(("bogus",), (4,), mesh)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_one_device_equals_2x2x2_mesh(name):
    batches = [toy_batch(s) for s in range(3)]
    s1, l1 = run(engine((1, 1, 1), name=name), batches)
    s8, l8 = run(engine((2, 2, 2), name=name), batches)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(host(s1.params)), jax.tree.leaves(host(s8.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert l1[-1] < l1[0]


def reference_update(batch, lr_step0):
    """Independent reference: grad of the full-batch token mean, clip, adamw."""
    model = toy_model()
    _, params = nnx.split(model, nnx.Param)

    def mean_loss(p):
        m = nnx.merge(nnx.graphdef(model), p)
        (s, d), _ = ce_loss(m, batch)
        return s / d

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr_step0, b1=0.9, b2=0.999, eps=1e-8,
                                                                   weight_decay=0.0))

    @jax.jit
    def update(params):
        loss, g = jax.value_and_grad(mean_loss)(params)
        upd, _ = opt.update(g, opt.init(params), params)
        return loss, optax.apply_updates(params, upd)

    loss, new = update(params)
    return float(loss), host(new)


@pytest.mark.parametrize("k", [4])
def test_micro_batches_equal_full_batch(k):
    batch = {key: jnp.asarray(v) for key, v in toy_batch(1).items()}
    counts = batch["loss_mask"][:, 1:].reshape(k, -1).sum(1)
    assert len(set(np.asarray(counts).tolist())) > 1  # unequal tokens per micro-batch
    # warmup=1 step means lr=0 at step 0: take the second step, compare both ways
    eng_1, eng_k = engine(k=1), engine((2, 1, 1), k=k)
    s1, sk = eng_1.init_state(), eng_k.init_state()
    for _ in range(2):
        s1, m1 = eng_1.step(s1, eng_1.place_batch(batch))
        sk, mk = eng_k.step(sk, eng_k.place_batch(batch))
        np.testing.assert_allclose(float(m1["loss"]), float(mk["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(m1["denom"]), float(batch["loss_mask"][:, 1:].sum()))
    for a, b in zip(jax.tree.leaves(host(s1.params)), jax.tree.leaves(host(sk.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_empty_micro_batches_are_skipped_exactly():
    """Micro-batches with an all-zero loss_mask are not computed (RL batches put
    their padding rows last): same loss and params as one full batch, and a
    loss that would be NaN on an empty micro-batch never runs there."""
    batch = {key: jnp.asarray(v) for key, v in toy_batch(3).items()}
    batch["loss_mask"] = batch["loss_mask"].at[4:].set(0.0)  # micro-batches 2, 3 of 4: empty

    def nan_if_empty(model, b):
        (l, d), m = ce_loss(model, b)
        return (l + jnp.where(d == 0, jnp.nan, 0.0), d), m

    mask_tokens = float(batch["loss_mask"][:, 1:].sum())
    eng_1, eng_k = engine(k=1), engine(k=4, loss=nan_if_empty)
    s1, sk = eng_1.init_state(), eng_k.init_state()
    for _ in range(2):
        s1, m1 = eng_1.step(s1, eng_1.place_batch(batch))
        sk, mk = eng_k.step(sk, eng_k.place_batch(batch))
        assert float(mk["finite"]) == 1.0
        np.testing.assert_allclose(float(m1["loss"]), float(mk["loss"]), rtol=1e-6)
        # a token-mean metric and a max come out as the whole batch's
        np.testing.assert_allclose(float(mk["nll_mean"]), float(m1["nll_mean"]), rtol=1e-5)
        np.testing.assert_allclose(float(mk["nll_max"]), float(m1["nll_max"]), rtol=1e-5)
        assert float(mk["loss_tokens"]) == float(m1["loss_tokens"]) == mask_tokens
    # other metrics: the mean over the 2 computed micro-batches, weighted by their
    # loss tokens (the empty ones weigh 0)
    mask = np.asarray(batch["loss_mask"])
    frac = [mask[2 * i:2 * i + 2, 1:].mean() for i in range(2)]
    w = [mask[2 * i:2 * i + 2].sum() for i in range(2)]
    np.testing.assert_allclose(float(mk["mask_frac"]), np.dot(w, frac) / np.sum(w), rtol=1e-6)
    assert abs(np.dot(w, frac) / np.sum(w) - np.mean(frac)) > 1e-3  # the weights matter here
    for a, b in zip(jax.tree.leaves(host(s1.params)), jax.tree.leaves(host(sk.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_first_update_matches_independent_reference():
    batch = {key: jnp.asarray(v) for key, v in toy_batch(2).items()}
    opt, sched = make_optimizer(OptimSection(name="adamw", lr=0.05, schedule="constant"), 10)
    eng = Engine(toy_model(), ce_loss, opt, sched, mesh_lib.make_mesh((2, 1, 1), devices=jax.devices()[:2]),
                 micro_batches=4)
    state, m = eng.step(eng.init_state(), eng.place_batch(batch))
    ref_loss, ref_params = reference_update(batch, 0.05)
    np.testing.assert_allclose(float(m["loss"]), ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(host(state.params)), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_non_finite_batch_is_skipped_bit_identically():
    eng = engine((2, 2, 2), k=2)
    state, _ = run(eng, [toy_batch(0)])
    before_p, before_o = host(state.params), host(state.opt_state)
    bad = toy_batch(1)
    bad["loss_mask"][3, 2] = np.nan
    state, m = eng.step(state, eng.place_batch(bad))
    assert float(m["finite"]) == 0.0 and int(m["skipped"]) == 1 and int(state.skipped) == 1
    assert int(state.step) == 2
    for a, b in zip(jax.tree.leaves(before_p), jax.tree.leaves(host(state.params))):
        assert np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before_o), jax.tree.leaves(host(state.opt_state))):
        assert np.array_equal(a, b)
    state, m = eng.step(state, eng.place_batch(toy_batch(2)))  # training goes on
    assert float(m["finite"]) == 1.0 and int(m["skipped"]) == 1
    assert not np.array_equal(jax.tree.leaves(before_p)[0], np.asarray(jax.tree.leaves(state.params)[0]))


def assert_same_tree(a, b):
    la, lb = jax.tree.leaves(host(a)), jax.tree.leaves(host(b))
    assert len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def optax_engine(opt, lr, shape=(2, 2, 2), k=2):
    """An Engine on an optimizer built here, not from a (validated) config."""
    mesh = mesh_lib.make_mesh(shape, devices=jax.devices()[: np.prod(shape)])
    return Engine(toy_model(), ce_loss, opt, optax.constant_schedule(lr), mesh, micro_batches=k)


@pytest.mark.parametrize("lr,eps", [(1e30, 1e-8), (0.05, float("nan"))])
def test_non_finite_update_is_skipped_bit_identically(lr, eps):
    """Finite loss and gradients, but an update that is not: lr 1e30 gives
    |u| ~ 1e30, whose global norm overflows float32 (the old guard let it
    write params of 1e30, and every later loss was NaN); a NaN eps makes every
    update NaN. The step is skipped as a NaN gradient would be."""
    eng = optax_engine(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, eps=eps)), lr)
    state = eng.init_state()
    before_p, before_o = host(state.params), host(state.opt_state)
    for i in range(2):
        state, m = eng.step(state, eng.place_batch(toy_batch(i)))
        assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
        assert not np.isfinite(float(m["update_norm"]))
        assert float(m["finite"]) == 0.0 and int(m["skipped"]) == i + 1
    assert int(state.step) == 2 and int(state.skipped) == 2
    assert_same_tree(state.params, before_p)
    assert_same_tree(state.opt_state, before_o)


def test_finite_update_is_applied_and_its_norm_logged():
    eng = optax_engine(optax.adamw(0.05), 0.05)
    state = eng.init_state()
    before = host(state.params)
    state, m = eng.step(state, eng.place_batch(toy_batch(0)))
    assert float(m["finite"]) == 1.0 and int(m["skipped"]) == 0 and int(state.skipped) == 0
    diff = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
            for a, b in zip(jax.tree.leaves(host(state.params)), jax.tree.leaves(before))]
    want = np.sqrt(sum((d ** 2).sum() for d in diff))
    assert want > 0.05  # Adam's first step moves each weight with a gradient by ~lr
    np.testing.assert_allclose(float(m["update_norm"]), want, rtol=1e-5)


def test_skip_streak_counts_steps_in_a_row():
    """Hand-worked: the cumulative `skipped` count and the last step's
    `finite`, after 1 step per batch (SFT) or 2 (RL epochs)."""
    def feed(streak, skipped, finite, steps=1):
        streak.update({"skipped": np.int32(skipped), "finite": np.float32(finite)},
                      at="step x", steps=steps)
        return streak.count

    s = SkipStreak(3, skipped=4)  # resumed with 4 old skips: they are not a streak
    assert [feed(s, 5, 0), feed(s, 6, 0), feed(s, 6, 1), feed(s, 7, 0)] == [1, 2, 0, 1]
    assert feed(s, 8, 0) == 2
    with pytest.raises(NonFiniteError, match=r"step x: 3 optimizer steps in a row .*"
                       r"max_skipped_steps=3.*optim\.lr and optim\.eps"):
        feed(s, 9, 0)
    s = SkipStreak(5)  # two steps per call: all skipped, or the last ones only
    assert [feed(s, 0, 1, 2), feed(s, 2, 0, 2), feed(s, 4, 0, 2)] == [0, 2, 4]
    assert [feed(s, 5, 0, 2), feed(s, 5, 1, 2), feed(s, 6, 0, 2)] == [1, 0, 1]
    assert feed(s, 8, 0, 2) == 3
    with pytest.raises(NonFiniteError, match="step x: 5 optimizer steps in a row"):
        feed(s, 10, 0, 2)
    with pytest.raises(ValueError, match="limit=0"):
        SkipStreak(0)


def test_reference_params_reach_the_loss():
    """A KL-to-reference loss: zero (and zero grad) when params equal the reference."""
    def kl_loss(model, batch, ref_model):
        logp = jax.nn.log_softmax(model(batch["tokens"]))
        ref_logp = jax.nn.log_softmax(ref_model(batch["tokens"]))
        kl = (jnp.exp(logp) * (logp - ref_logp)).sum(-1)
        return (kl.sum(), jnp.float32(kl.size)), {}

    eng = engine((2, 2, 2), loss=kl_loss)
    state = eng.init_state()
    ref = mesh_lib.place(host(state.params), eng.param_sh)
    batch = eng.place_batch(toy_batch(0))
    state, m = eng.step(state, batch, ref_params=ref)
    assert float(m["loss"]) == 0.0 and float(m["grad_norm"]) < 1e-5
    # move away from the reference with a different model: KL becomes positive
    other = Engine(toy_model(1), kl_loss, eng.optimizer, eng.schedule, eng.mesh)
    s2, m2 = other.step(other.init_state(), batch, ref_params=ref)
    assert float(m2["loss"]) > 1e-3


def test_schedule_warmup_then_cosine_or_constant():
    import math

    _, cos = make_optimizer(OptimSection(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), 14)
    _, const = make_optimizer(OptimSection(lr=1.0, warmup_steps=4, schedule="constant"), 14)
    for t in range(15):
        if t < 4:
            want = t / 4
        else:  # cosine from 1 down to 0.1 over the remaining 10 steps
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t - 4, 10) / 10))
        np.testing.assert_allclose(float(cos(t)), want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(float(const(t)), min(t / 4, 1.0), rtol=1e-6)

