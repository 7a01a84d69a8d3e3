"""jaxrl_lm.models: the NNX decoder (Llama / Qwen2 / Gemma by config).

    cfg = ModelConfig(vocab_size=..., hidden_size=..., ...)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    logits = model(tokens_bt, positions_bt)
"""

from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.decoder import Decoder
from jaxrl_lm.models.default import default_policy
from jaxrl_lm.models.hf import load_hf, save_hf
from jaxrl_lm.models.layers import KVCache

__all__ = ["ModelConfig", "Decoder", "KVCache", "default_policy", "load_hf", "save_hf"]
