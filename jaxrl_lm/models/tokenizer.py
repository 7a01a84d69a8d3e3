"""The character-level tokenizer of the embedded default policy.

One token per character, stored as an ordinary HF `tokenizer.json`, so the
default goes through the same `AutoTokenizer.from_pretrained` path as a real
Qwen2/Llama/Gemma folder. Vocabulary (128 ids, a multiple of every mesh axis
size up to 128, so the `vocab` axis shards evenly):

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4 "\\n"   5..99 " ".."~" (0x20..0x7E)
    100..127 <reserved_0>..<reserved_27>   (special, never produced by encode)

Characters outside the table encode to <unk>. Encoding adds no special tokens
(callers prepend <bos> themselves when they want it) and decoding concatenates
the characters with no separator and no clean-up of spaces, so
decode(encode(s)) == s for every string over the table, and decode(a + b) ==
decode(a) + decode(b), which the jitted text interface in envs/text.py relies on.

Regenerate the shipped folder with

    python -m jaxrl_lm.models.tokenizer --write-default
"""

from __future__ import annotations

import argparse
import os
import pathlib

from tokenizers import AddedToken, Tokenizer, decoders, models

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = "\n" + "".join(chr(c) for c in range(0x20, 0x7F))
VOCAB_SIZE = 128
RESERVED = tuple(f"<reserved_{i}>" for i in range(VOCAB_SIZE - len(SPECIALS) - len(CHARS)))
DEFAULT_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "default"


def char_vocab() -> dict[str, int]:
    """Token string -> id for the whole table (specials, characters, reserved)."""
    tokens = list(SPECIALS) + list(CHARS) + list(RESERVED)
    return {tok: i for i, tok in enumerate(tokens)}


def char_tokenizer() -> Tokenizer:
    """A `tokenizers.Tokenizer` with one token per character of `CHARS`.

    The model is BPE with no merges and no pre-tokenizer: the whole input is one
    word, split into single characters, each looked up in the table. Without an
    explicit decoder `tokenizers` would join tokens with spaces; `Fuse` joins
    them with nothing, which is what makes decoding exact.
    """
    vocab = char_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    # normalized=False: match the literal text "<eos>" etc.; no strip: keep
    # the spaces around special tokens as characters.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIALS + RESERVED])
    return tok


def quiet_transformers() -> None:
    """Before importing transformers: skip its advisory notices (without torch it
    prints "PyTorch was not found" on import, though we only use its tokenizers
    and configs). An explicit TRANSFORMERS_NO_ADVISORY_WARNINGS is kept."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def char_tokenizer_hf(model_max_length: int = 2048):
    """The same tokenizer wrapped for transformers (PreTrainedTokenizerFast)."""
    quiet_transformers()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=char_tokenizer(), bos_token=BOS, eos_token=EOS,
        pad_token=PAD, unk_token=UNK, clean_up_tokenization_spaces=False,
        model_max_length=model_max_length)


def write_default(path: pathlib.Path = DEFAULT_DIR) -> pathlib.Path:
    """Write the default policy's HF folder: config.json and tokenizer files."""
    from jaxrl_lm.models.default import DEFAULT_CONFIG, DEFAULT_MAX_POSITIONS
    from jaxrl_lm.models.hf import write_config

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer_hf(model_max_length=DEFAULT_MAX_POSITIONS)
    tok.save_pretrained(path)
    write_config(DEFAULT_CONFIG, path, tokenizer=tok,
                 max_position_embeddings=DEFAULT_MAX_POSITIONS)
    return path


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-default", action="store_true",
                        help=f"(re)write the shipped folder {DEFAULT_DIR}")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if not args.write_default:
        parser.error("nothing to do: pass --write-default")
    print(write_default(args.out))


if __name__ == "__main__":
    _main()
