"""The embedded default policy: a tiny Llama-style decoder with a character tokenizer.

The package ships an HF folder, jaxrl_lm/assets/default/ (config.json,
tokenizer.json, tokenizer_config.json), and no weights: `default_policy` reads
config and tokenizer with the same functions `load_hf` uses on a downloaded
Qwen2/Llama/Gemma folder, then initialises the weights from `key`. The folder is
regenerated from `DEFAULT_CONFIG` by

    python -m jaxrl_lm.models.tokenizer --write-default

Shape (1,000,576 parameters): 4 layers, hidden 128, 4 query heads and 2 KV heads of
32, SwiGLU MLP 512, the 128-id character vocabulary, tied embeddings, RoPE theta
10,000, contexts up to 2048 tokens. model_type is "llama", not "qwen2":
transformers' AutoTokenizer swaps any qwen2 folder's tokenizer for its
byte-level Qwen2Tokenizer, which would drop the spaces and newlines of the
character tokenizer; a llama folder keeps the tokenizer.json as written.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxrl_lm.models import hf
from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.tokenizer import DEFAULT_DIR, VOCAB_SIZE

DEFAULT_MAX_POSITIONS = 2048
DEFAULT_CONFIG = ModelConfig(
    vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_layers=4,
    num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
    tie_embeddings=True)


def default_policy(key: jax.Array | int = 0, *, dtype: str = "float32",
                   param_dtype: str | None = None, value_head: bool = False):
    """(Decoder, tokenizer) of the embedded default, weights initialised from `key`.

    key: a PRNG key or an int seed. dtype/param_dtype/value_head as in `load_hf`.
    """
    from jaxrl_lm.models.decoder import Decoder

    if isinstance(key, int):
        key = jax.random.key(key)
    cfg = hf.load_config(DEFAULT_DIR, dtype=dtype, param_dtype=param_dtype,
                         value_head=value_head)
    tokenizer = hf.load_tokenizer(DEFAULT_DIR)
    return Decoder(cfg, rngs=nnx.Rngs(params=key)), tokenizer
