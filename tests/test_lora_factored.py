"""The factored LoRA forward (models/lora.py, layers.linear): x W + (x A) B
equals the merged x (W + s A B) in float32, logits and gradients w.r.t. A and
B; a train step compiles without a weight-sized gradient; the decode loop
(factored too) scores what the training forward scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.models import lora
from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.decoder import Decoder
from jaxrl_lm.sampling import sample

# a model with every optional projection path: q/k/v biases, an o bias, qk-norm
CFG = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True,
                  attention_out_bias=True, qk_norm=True)


def _model(cfg=CFG, rank=4, alpha=8.0, targets=lora.TARGETS, std=0.3):
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    lora.apply_lora(model, rank=rank, alpha=alpha, targets=targets, seed=1)
    rng = np.random.default_rng(2)  # non-zero B (and a fresh A): the adapters matter
    nnx.update(model, jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype),
                                   nnx.state(model, nnx.LoRAParam)))
    return model


def _inputs(b=3, t=9, vocab=CFG.vocab_size):
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, vocab, (b, t)), jnp.int32)
    return tokens, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def _loss(adapters, graphdef, rest, tokens, positions):
    """Mean next-token log-likelihood: a scalar that every adapter moves."""
    model = nnx.merge(graphdef, adapters, rest)
    logp = jax.nn.log_softmax(model(tokens, positions)[:, :-1])
    return jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()


@pytest.mark.parametrize("targets", [lora.TARGETS, ("k_proj", "o_proj", "down_proj")])
def test_factored_forward_and_gradients_equal_the_merged(targets):
    model = _model(targets=targets)
    stack = model.layers
    assert not stack.merged_forward
    arrays = stack.arrays()
    for name in targets:  # the forward reads factors, no merged weight
        w = getattr(stack, name)[...]
        np.testing.assert_array_equal(arrays[name], w)
        np.testing.assert_allclose(arrays[f"{name}_lora_b"],
                                   2.0 * getattr(stack, f"{name}_lora_b")[...], rtol=0)
    tokens, positions = _inputs()
    factored = np.asarray(model(tokens, positions))
    stack.merged_forward = True
    merged = np.asarray(model(tokens, positions))
    stack.merged_forward = False
    merged_view = np.asarray(lora.without_adapters(model)(tokens, positions))
    assert np.abs(merged - merged_view).max() > 0.1  # the adapters change the logits
    # float32: only the order of summation differs (x (W + s A B) vs x W + (x A) s B),
    # then 3 layers and the norms; logits ~0.3, the adapters' own effect > 0.1
    np.testing.assert_allclose(factored, merged, rtol=0, atol=1e-5)

    grads = {}
    for mode in (False, True):  # merged_forward is static: in the graphdef
        model.layers.merged_forward = mode
        graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
        grads[mode] = jax.grad(_loss)(adapters, graphdef, rest, tokens, positions)
    model.layers.merged_forward = False
    leaves = {mode: dict(nnx.to_flat_state(g)) for mode, g in grads.items()}
    assert len(leaves[False]) == 2 * len(targets)
    for path, g in leaves[False].items():
        want = np.asarray(leaves[True][path][...])
        got = np.asarray(g[...])
        scale = np.abs(want).max()
        assert scale > 1e-4, path  # a gradient that is not (near) zero
        # float32 through 3 layers and back: summation order only (a wrong scale,
        # transpose or factor would be off by O(scale))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=str(path))


def _step_temp_bytes(model) -> int:
    """XLA's temporary buffers of a compiled value_and_grad of `_loss`."""
    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, ...)
    tokens, positions = _inputs(b=2, t=8, vocab=model.config.vocab_size)
    fn = jax.jit(jax.value_and_grad(_loss), static_argnums=1)
    compiled = fn.lower(adapters, graphdef, rest, tokens, positions).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_the_training_step_holds_no_merged_weight_or_its_gradient():
    """Wide MLP, 16 tokens, 10 layers (a rolled layer scan, as at real depths):
    the merged forward materializes W' and its gradient dW' for every target
    (measured: 2.4x the targets' bytes in XLA's temporaries); the factored one
    only [M, r] products and the factors' gradients (0.45x: XLA:CPU's copies of
    the scanned weights, the same without adapters)."""
    cfg = ModelConfig(vocab_size=64, hidden_size=256, intermediate_size=1024, num_layers=10,
                      num_heads=4, num_kv_heads=2)
    model = _model(cfg, rank=2, std=0.02)
    targets = sum(getattr(model.layers, n)[...].nbytes for n in lora.TARGETS)
    factored = _step_temp_bytes(model)
    model.layers.merged_forward = True
    merged = _step_temp_bytes(model)
    assert merged - factored >= 1.5 * targets, (merged, factored, targets)
    assert factored <= 0.5 * targets, (factored, targets)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_the_sampler_scores_what_the_training_forward_scores(param_dtype):
    """The decode loop is factored like the training forward: the log-probs
    `sample` returns match a cache-free forward of the sampled sequence (what an
    RL ratio compares at its first step), a bfloat16 base included (a decode
    loop merging a bfloat16 W + s A B rounds the adapters' update: 7.8e-4 nats
    apart in a variant of this test with 4 rows of 12 tokens, 4.8e-7 factored)."""
    cfg = CFG.replace(param_dtype=param_dtype)
    model = _model(cfg, std=0.05)
    b, p, n = 2, 5, 6
    prompt, _ = _inputs(b, p)
    out = sample(model, prompt, jnp.full((b,), p, jnp.int32), jax.random.PRNGKey(0),
                 max_new_tokens=n, temperature=1.0)
    seq = jnp.concatenate([prompt, out.tokens], axis=1)
    logits = model(seq, jnp.broadcast_to(jnp.arange(p + n, dtype=jnp.int32), (b, p + n)))
    logp = jax.nn.log_softmax(logits[:, p - 1:-1])
    want = np.asarray(jnp.take_along_axis(logp, out.tokens[..., None], -1)[..., 0])
    # float32 compute: the cached and cache-free attention sum in other orders
    np.testing.assert_allclose(np.asarray(out.logp), want, rtol=0, atol=1e-5)
