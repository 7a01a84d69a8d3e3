"""The embedded default policy: a tiny Llama-style decoder with a character tokenizer.

The package ships an HF folder, jaxrl_lm/assets/default/ (config.json,
tokenizer.json, tokenizer_config.json), and no weights: `default_policy` reads
config and tokenizer with the same functions `load_hf` uses on a downloaded
Qwen2/Llama/Gemma folder, then initialises the weights from `key`. The folder is
regenerated from `DEFAULT_CONFIG` by

    python -m jaxrl_lm.models.default --write-default

Shape (1,000,576 parameters): 4 layers, hidden 128, 4 query heads and 2 KV heads of
32, SwiGLU MLP 512, the 128-id character vocabulary, tied embeddings, RoPE theta
10,000, contexts up to 2048 tokens. model_type is "llama", not "qwen2":
transformers' AutoTokenizer swaps any qwen2 folder's tokenizer for its
byte-level Qwen2Tokenizer, which would drop the spaces and newlines of the
character tokenizer; a llama folder keeps the tokenizer.json as written.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
from flax import nnx

from jaxrl_lm.cli_args import ArgumentParser
from jaxrl_lm.models import hf
from jaxrl_lm.models.config import ModelConfig
from jaxrl_lm.models.decoder import Decoder
from jaxrl_lm.models.tokenizer import DEFAULT_DIR, VOCAB_SIZE, char_tokenizer_hf

DEFAULT_MAX_POSITIONS = 2048
DEFAULT_CONFIG = ModelConfig(
    vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=512, num_layers=4,
    num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
    tie_embeddings=True)


def default_policy(key: jax.Array | int = 0, *, dtype: str = "float32",
                   param_dtype: str | None = None, value_head: bool = False,
                   hidden_size: int | None = None, num_layers: int | None = None):
    """(Decoder, tokenizer) of the embedded default, weights initialised from `key`.

    key: a PRNG key or an int seed. dtype/param_dtype/value_head as in `load_hf`.
    hidden_size / num_layers: a narrower or shallower variant of the same
    design (same tokenizer and heads, MLP 4 x hidden), for experiments that
    must run in minutes on a CPU; None keeps the default's 128 and 4.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    cfg = hf.load_config(DEFAULT_DIR, dtype=dtype, param_dtype=param_dtype,
                         value_head=value_head)
    if hidden_size is not None:
        if hidden_size < cfg.num_heads or hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size={hidden_size!r}: must be a positive multiple of "
                             f"the {cfg.num_heads} heads")
        cfg = dataclasses.replace(cfg, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                                  head_dim=hidden_size // cfg.num_heads)
    if num_layers is not None:
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers!r}: must be >= 1")
        cfg = dataclasses.replace(cfg, num_layers=num_layers)
    tokenizer = hf.load_tokenizer(DEFAULT_DIR)
    return Decoder(cfg, rngs=nnx.Rngs(params=key)), tokenizer


def write_default(path: pathlib.Path = DEFAULT_DIR) -> pathlib.Path:
    """Write the default policy's HF folder: config.json and tokenizer files."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer_hf(model_max_length=DEFAULT_MAX_POSITIONS)
    tok.save_pretrained(path)
    hf.write_config(DEFAULT_CONFIG, path, tokenizer=tok,
                    max_position_embeddings=DEFAULT_MAX_POSITIONS)
    return path


def _main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-default", action="store_true",
                        help=f"(re)write the shipped folder {DEFAULT_DIR}")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if not args.write_default:
        parser.error("nothing to do: pass --write-default")
    print(write_default(args.out))


if __name__ == "__main__":
    _main()
