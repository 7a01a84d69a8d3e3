"""Decoder vs a float64 numpy reference written from the formulas (per head,
per position loops), for the Llama, Qwen2 and Gemma flavours (the newer
families are checked against transformers in test_models_families.py); causal masking;
KV-cache decode == full forward; GQA; value head; logical axis metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_lm.models import Decoder, ModelConfig

BASE = dict(vocab_size=29, hidden_size=16, intermediate_size=24, num_layers=2,
            num_heads=4, num_kv_heads=2, rope_theta=500.0, rms_norm_eps=1e-5)
FLAVOURS = {
    "llama": dict(tie_embeddings=False, attention_bias=True, attention_out_bias=True),
    "qwen2": dict(tie_embeddings=True, attention_bias=True),
    "gemma": dict(activation="gelu_tanh", norm_offset=1, scale_embeddings=True, head_dim=6),
}


def random_model(flavour: str, seed: int = 0, **over) -> Decoder:
    """A model whose every parameter (norms and biases too) is random."""
    cfg = ModelConfig(**{**BASE, **FLAVOURS[flavour], **over})
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model)
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(seed + 1)
    leaves = [jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    nnx.update(model, jax.tree.unflatten(tree, leaves))
    return model


def np_params(model):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model)))


def ref_forward(cfg: ModelConfig, p: dict, tokens: np.ndarray, positions: np.ndarray):
    """float64 numpy: returns (logits [B,T,V], final hidden [B,T,D])."""
    H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def norm(x, w):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.rms_norm_eps) * (cfg.norm_offset + w)

    def rot(x, pos):  # x [Hd] at one position, pairs (i, i + Hd/2)
        out = x.copy()
        for i in range(Hd // 2):
            a = pos * cfg.rope_theta ** (-2.0 * i / Hd)
            out[i] = x[i] * np.cos(a) - x[i + Hd // 2] * np.sin(a)
            out[i + Hd // 2] = x[i + Hd // 2] * np.cos(a) + x[i] * np.sin(a)
        return out

    def act(x):
        if cfg.activation == "silu":
            return x / (1 + np.exp(-x))
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    B, T = tokens.shape
    x = p["embed"][tokens]
    if cfg.scale_embeddings:
        x = x * np.sqrt(cfg.hidden_size)
    L = p["layers"]
    for l in range(cfg.num_layers):
        h = norm(x, L["attn_norm"][l])
        q = np.einsum("btd,dnh->btnh", h, L["q_proj"][l])
        k = np.einsum("btd,dnh->btnh", h, L["k_proj"][l])
        v = np.einsum("btd,dnh->btnh", h, L["v_proj"][l])
        if cfg.attention_bias:
            q, k, v = q + L["q_bias"][l], k + L["k_bias"][l], v + L["v_bias"][l]
        o = np.zeros((B, T, H, Hd))
        for b in range(B):
            for n in range(H):
                kv = n // (H // K)
                for t in range(T):
                    qt = rot(q[b, t, n], positions[b, t])
                    s = np.array([qt @ rot(k[b, u, kv], positions[b, u]) / np.sqrt(Hd)
                                  if positions[b, u] <= positions[b, t] else -np.inf
                                  for u in range(T)])
                    w = np.exp(s - s.max())
                    o[b, t, n] = (w / w.sum()) @ v[b, :, kv]
        o = np.einsum("btnh,nhd->btd", o, L["o_proj"][l])
        if cfg.attention_out_bias:
            o = o + L["o_bias"][l]
        x = x + o
        h = norm(x, L["mlp_norm"][l])
        x = x + (act(h @ L["gate_proj"][l]) * (h @ L["up_proj"][l])) @ L["down_proj"][l]
    h = norm(x, p["final_norm"])
    w_out = p["embed"].T if cfg.tie_embeddings else p["lm_head"]
    return h @ w_out, h


def tokens_positions(seed=0, b=2, t=7, v=29):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return tokens, positions


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_matches_float64_reference(flavour):
    model = random_model(flavour)
    tokens, positions = tokens_positions()
    positions[1] += 3  # a row that starts mid-sequence: RoPE must use the given positions
    want, _ = ref_forward(model.config, np_params(model), tokens, positions)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_value_head_matches_reference():
    model = random_model("qwen2", value_head=True)
    tokens, positions = tokens_positions(1)
    p = np_params(model)
    _, h = ref_forward(model.config, p, tokens, positions)
    want = h @ p["value_head"]["kernel"] + p["value_head"]["bias"]
    got = np.asarray(model.values(jnp.asarray(tokens), jnp.asarray(positions)))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="value head"):
        random_model("qwen2").values(jnp.asarray(tokens), jnp.asarray(positions))


def test_causal_future_tokens_do_not_leak():
    model = random_model("llama")
    tokens, positions = tokens_positions(2)
    changed = tokens.copy()
    changed[:, 4:] = (changed[:, 4:] + 5) % 29
    a = model(jnp.asarray(tokens), jnp.asarray(positions))
    b = model(jnp.asarray(changed), jnp.asarray(positions))
    np.testing.assert_array_equal(np.asarray(a[:, :4]), np.asarray(b[:, :4]))
    assert np.abs(np.asarray(a[:, 4:] - b[:, 4:])).max() > 1e-3


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_kv_cache_decode_equals_full_forward(flavour):
    """Right-padded prompts of lengths 3 and 5, then one token at a time."""
    model = random_model(flavour)
    tokens, positions = tokens_positions(3, t=9)
    full = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions)))
    lengths = np.array([3, 5])
    prompt = np.where(np.arange(5) < lengths[:, None], tokens[:, :5], 0)  # junk padding
    cache = model.init_cache(2, 12)
    step = jax.jit(lambda m, t, p, c: m(t, p, cache=c))
    logits, cache = step(model, jnp.asarray(prompt), jnp.asarray(positions[:, :5]), cache)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(logits[b, :n]), full[b, :n], rtol=1e-5, atol=1e-5)
    for i in range(4):
        pos = lengths + i
        tok = tokens[np.arange(2), pos][:, None]
        logits, cache = step(model, jnp.asarray(tok), jnp.asarray(pos[:, None].astype(np.int32)), cache)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[np.arange(2), pos],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_prefill_equals_cached_forward_then_decodes_across_key_blocks(flavour):
    """prefill (the cache-free layer scan) == the cached forward on a fresh cache,
    hidden states and every cache slot; then decoding from
    positions 29 and 31 past the first key block boundary (32) == the full forward."""
    model = random_model(flavour)
    tokens, positions = tokens_positions(4, t=40)
    full = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions)))
    lengths = np.array([29, 31])
    prompt = np.where(np.arange(31) < lengths[:, None], tokens[:, :31], 0)
    h, cache = jax.jit(lambda m, t: m.prefill(t, 40))(model, jnp.asarray(prompt))
    h2, cache2 = jax.jit(lambda m, t, p: m.hidden_states(t, p, cache=m.init_cache(2, 40)))(
        model, jnp.asarray(prompt), jnp.asarray(positions[:, :31]))
    np.testing.assert_allclose(np.asarray(h), np.asarray(h2), rtol=1e-5, atol=1e-5)
    for a, b in zip(cache.k + cache.v, cache2.k + cache2.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    logits = np.asarray(model.logits_from_hidden(h))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(logits[b, :n], full[b, :n], rtol=1e-5, atol=1e-5)
    step = jax.jit(lambda m, t, p, c: m(t, p, cache=c))
    for i in range(8):
        pos = lengths + i
        tok = tokens[np.arange(2), pos][:, None]
        out, cache = step(model, jnp.asarray(tok), jnp.asarray(pos[:, None].astype(np.int32)),
                          cache)
        np.testing.assert_allclose(np.asarray(out[:, 0]), full[np.arange(2), pos],
                                   rtol=1e-5, atol=1e-5)


def test_gqa_equals_multi_head_with_repeated_kv():
    """K=2 shared heads == H=4 heads whose k/v weights are the shared ones repeated."""
    gqa = random_model("qwen2")
    mha = random_model("qwen2", num_kv_heads=4)
    s = nnx.state(gqa)
    t = nnx.state(mha)
    for name in ("k_proj", "v_proj"):
        t["layers"][name].value = jnp.repeat(s["layers"][name][...], 2, axis=2)
    for name in ("k_bias", "v_bias"):
        t["layers"][name].value = jnp.repeat(s["layers"][name][...], 2, axis=1)
    for name in ("q_proj", "q_bias", "o_proj", "attn_norm", "mlp_norm", "gate_proj",
                 "up_proj", "down_proj"):
        t["layers"][name].value = s["layers"][name][...]
    t["embed"].value, t["final_norm"].value = s["embed"][...], s["final_norm"][...]
    nnx.update(mha, t)
    tokens, positions = tokens_positions(4)
    np.testing.assert_allclose(np.asarray(gqa(tokens, positions)),
                               np.asarray(mha(tokens, positions)), rtol=1e-5, atol=1e-5)


def test_logical_axis_names_on_every_param():
    model = random_model("llama", value_head=True)
    specs = nnx.get_partition_spec(nnx.state(model))
    flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, nnx.Variable))
    shapes = jax.tree.leaves(nnx.state(model))
    assert len(flat) == len(shapes) == 18
    for var, arr in zip(flat, shapes):
        assert len(var.get_metadata()["out_sharding"]) == arr.ndim
    assert nnx.state(model)["layers"]["q_proj"].get_metadata()["out_sharding"] == (
        "layers", "embed", "heads", "head_dim")


def test_bfloat16_compute_close_to_float32():
    model = random_model("gemma")
    m16 = random_model("gemma", dtype="bfloat16")
    nnx.update(m16, nnx.state(model))
    tokens, positions = tokens_positions(5)
    a = np.asarray(model(tokens, positions))
    b = np.asarray(m16(tokens, positions))
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


@pytest.mark.parametrize("field,value,match", [
    ("num_kv_heads", 3, "divide num_heads"),
    ("activation", "relu", "silu, gelu_tanh"),
    ("norm_offset", 0.5, "norm_offset"),
    ("dtype", "float16", "float32, bfloat16"),
    ("head_dim", 5, "even"),
    ("vocab_size", 0, "positive"),
])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**BASE, field: value})
