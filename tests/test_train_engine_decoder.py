"""The train engine on the library's Decoder (stacked layers): partition
specs match the rule table; 1 device equals a 2x2x2 mesh with micro-batches."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxrl_lm.train import mesh as mesh_lib
from tests.test_train_engine import engine, host, run


def tiny_decoder(seed=0):
    from jaxrl_lm.models import Decoder, ModelConfig

    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=4)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


# Written by hand from RULES: vocab/mlp/heads/kv_heads -> tensor, embed -> fsdp,
# layers/norm/head_dim -> replicated.
DECODER_SPECS = {
    "embed": P("tensor", "fsdp"), "final_norm": P(None), "layers.attn_norm": P(None, None),
    "layers.mlp_norm": P(None, None), "layers.q_proj": P(None, "fsdp", "tensor", None),
    "layers.k_proj": P(None, "fsdp", "tensor", None), "layers.v_proj": P(None, "fsdp", "tensor", None),
    "layers.o_proj": P(None, "tensor", None, "fsdp"), "layers.gate_proj": P(None, "fsdp", "tensor"),
    "layers.up_proj": P(None, "fsdp", "tensor"), "layers.down_proj": P(None, "tensor", "fsdp"),
}


def _flat(tree):
    """{"layers.q_proj": leaf} from the dict keys on each leaf's path."""
    import re

    return {".".join(re.findall(r"\['([^']+)'\]", jax.tree_util.keystr(path))): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def decoder_batch(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 32, (8, 10)).astype(np.int32)
    mask = np.zeros((8, 10), np.float32)
    for i, n in enumerate(rng.integers(5, 11, 8)):
        mask[i, 4:n] = 1.0  # answers of unequal length after a 4-token prompt
    return {"tokens": tokens, "loss_mask": mask}


def test_decoder_partition_specs_follow_rule_table():
    from jaxrl_lm.train.sft import sft_loss

    eng = engine((2, 2, 2), model=tiny_decoder(), loss=sft_loss)
    state = eng.init_state()
    placed = _flat(state.params)
    assert set(placed) == set(DECODER_SPECS)
    logical = _flat(nnx.get_partition_spec(state.params))
    for name, arr in placed.items():
        assert arr.sharding.spec == DECODER_SPECS[name], name
        assert all(n in mesh_lib.RULES for n in logical[name]), logical[name]


def test_decoder_one_device_equals_2x2x2_mesh():
    from jaxrl_lm.train.sft import sft_loss

    batches = [decoder_batch(s) for s in range(2)]
    s1, l1 = run(engine((1, 1, 1), model=tiny_decoder(), loss=sft_loss), batches)
    s8, l8 = run(engine((2, 2, 2), k=2, model=tiny_decoder(), loss=sft_loss), batches)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(host(s1.params)), jax.tree.leaves(host(s8.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
