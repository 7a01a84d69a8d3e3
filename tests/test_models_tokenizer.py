"""The tokenizer rules every part shares (models/tokenizer.py): encode without
special tokens, the pad id (pad, else EOS, else 0) and the stop tokens
(newline and EOS, or EOS alone)."""

from types import SimpleNamespace

from jaxrl_lm.models import default_policy
from jaxrl_lm.models.tokenizer import char_vocab, encode, pad_id, stop_tokens


def test_rules_on_the_default_tokenizer():
    _, tok = default_policy(0)
    vocab = char_vocab()
    assert encode(tok, "a\nb") == [vocab["a"], vocab["\n"], vocab["b"]]  # no <bos> added
    assert pad_id(tok) == vocab["<pad>"] == 0
    assert stop_tokens(tok) == (vocab["\n"], vocab["<eos>"])
    assert stop_tokens(tok, newline=False) == (vocab["<eos>"],)


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=7)) == 3
    assert pad_id(SimpleNamespace()) == 0


def test_encode_takes_a_plain_tokenizers_object():
    from jaxrl_lm.models.tokenizer import char_tokenizer

    tok = char_tokenizer()  # tokenizers.Tokenizer: encode(text) -> Encoding with .ids
    assert encode(tok, "hi") == [char_vocab()["h"], char_vocab()["i"]]
    assert stop_tokens(tok) == (char_vocab()["\n"],)  # no eos_token_id attribute
