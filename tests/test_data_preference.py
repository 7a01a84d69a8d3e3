"""Preference pairs (jaxrl_lm.data.preference): plain and conversational rows
through the plain template checked by hand with the character tokenizer (one
token per character, so token positions are character offsets), multi-turn
responses scored on the assistant's tokens only, a Qwen-style template
against transformers' own rendering, over-long pairs never cut, bad rows
named."""

import numpy as np
import pytest

from jaxrl_lm.data.preference import build_pairs
from jaxrl_lm.models import default_policy
from jaxrl_lm.models.tokenizer import char_tokenizer_hf

QWEN_STYLE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return default_policy(0)[1]


def text_of(tok, pairs, r, s):
    """(the sequence's text, its scored characters joined, the scored spans)."""
    n = int((pairs.tokens[r, s] != tok.pad_token_id).sum())
    ids, mask = pairs.tokens[r, s, :n], pairs.mask[r, s, :n]
    text = tok.decode(ids.tolist())
    assert len(text) == n  # one character per token
    spans, start = [], None
    for i, m in enumerate(list(mask) + [0.0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append(text[start:i])
            start = None
    return text, spans


def test_plain_pair_through_the_plain_template(tok):
    pairs = build_pairs([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], tok, max_len=40)
    assert len(pairs) == 1 and pairs.dropped == 0 and pairs.tokens.shape == (1, 2, 40)
    prompt = "User: 2+2?\nAssistant:"
    assert pairs.prompt_len.tolist() == [len(prompt)]
    for s, answer in ((0, "4"), (1, "5")):
        text, spans = text_of(tok, pairs, 0, s)
        assert text == f"{prompt} {answer}\n"
        assert spans == [f" {answer}\n"]  # what the template adds for the assistant's turn
        assert pairs.mask[0, s, : len(prompt)].sum() == 0
        assert (pairs.tokens[0, s, len(text):] == tok.pad_token_id).all()
        assert pairs.mask[0, s, len(text):].sum() == 0


def test_multi_turn_mask_covers_only_the_assistants_tokens(tok):
    """A whole trajectory after the shared prompt: both assistant turns scored,
    the env's turn between them and the template's headers not, the trailing
    env turn left out; system_prompt goes first."""
    row = {"prompt": [{"role": "user", "content": "Guess 1-8."}],
           "chosen": [{"role": "assistant", "content": "4"},
                      {"role": "user", "content": "higher"},
                      {"role": "assistant", "content": "6"},
                      {"role": "user", "content": "correct"}],
           "rejected": "1"}
    pairs = build_pairs([row], tok, max_len=96, system_prompt="Play.")
    text, spans = text_of(tok, pairs, 0, 0)
    assert text == "Play.\nUser: Guess 1-8.\nAssistant: 4\nUser: higher\nAssistant: 6\n"
    assert spans == [" 4\n", " 6\n"]
    # by position, counted by hand: "Play.\n" 0-5, "User: Guess 1-8.\n" 6-22,
    # "Assistant:" 23-32, " 4\n" 33-35, "User: higher\n" 36-48, "Assistant:" 49-58, " 6\n" 59-61
    assert pairs.prompt_len[0] == 33
    assert np.flatnonzero(pairs.mask[0, 0]).tolist() == [33, 34, 35, 59, 60, 61]
    text_l, spans_l = text_of(tok, pairs, 0, 1)
    assert text_l == "Play.\nUser: Guess 1-8.\nAssistant: 1\n" and spans_l == [" 1\n"]
    np.testing.assert_array_equal(pairs.tokens[0, 0, :33], pairs.tokens[0, 1, :33])


def test_qwen_style_template_matches_transformers_rendering():
    """With a real template the sequence is transformers' rendering of the
    whole conversation, and the scored text of each assistant turn is its
    content and closing tokens (not the `<|im_start|>assistant` header)."""
    tok = char_tokenizer_hf()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_STYLE
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "6*7?"}]
    chosen = [{"role": "assistant", "content": "42"}, {"role": "user", "content": "sure?"},
              {"role": "assistant", "content": "yes"}]
    pairs = build_pairs([{"prompt": prompt, "chosen": chosen, "rejected": "41"}], tok, max_len=128)
    full = tok.apply_chat_template(prompt + chosen, tokenize=True, return_dict=False)
    full = list(getattr(full, "input_ids", full))
    n = len(full)
    assert pairs.tokens[0, 0, :n].tolist() == full
    assert (pairs.tokens[0, 0, n:] == tok.pad_token_id).all()
    scored = pairs.tokens[0, 0][pairs.mask[0, 0] > 0].tolist()
    assert tok.decode(scored) == "42<|im_end|>\nyes<|im_end|>\n"
    rejected = pairs.tokens[0, 1][pairs.mask[0, 1] > 0].tolist()
    assert tok.decode(rejected) == "41<|im_end|>\n"


def test_a_template_that_rewrites_earlier_turns_is_an_error():
    tok = char_tokenizer_hf()
    # shows only the last assistant turn's content, as thinking-stripping templates do
    tok.chat_template = ("{% for m in messages %}"
                         "{% if m['role'] == 'assistant' and not loop.last %}"
                         "A: ...\n{% else %}{{ m['role'][0] | upper }}: {{ m['content'] }}\n"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    row = {"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"},
                                      {"role": "user", "content": "b"},
                                      {"role": "assistant", "content": "c"}], "rejected": "x"}
    with pytest.raises(ValueError, match="row 0, column 'chosen': message 2: the chat template "
                                         "does not render this turn as a continuation"):
        build_pairs([row], tok, max_len=64)


def test_without_chat_the_strings_are_joined_as_given(tok):
    pairs = build_pairs([{"prompt": "sort 312:", "chosen": "123.", "rejected": "321."}], tok,
                        max_len=16, chat=False)
    text, spans = text_of(tok, pairs, 0, 0)
    assert text == "sort 312:123." and spans == ["123."]
    with pytest.raises(ValueError, match="row 0, column 'chosen': without a chat template"):
        build_pairs([{"prompt": "a", "chosen": [{"role": "assistant", "content": "b"}],
                      "rejected": "c"}], tok, max_len=16, chat=False)


def test_overlong_pairs_are_an_error_or_a_counted_drop(tok):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "2+2?", "chosen": "4", "rejected": "five, or so I think"}]
    # "User: 2+2?\nAssistant:" (21) + " five, or so I think\n" (21) = 42 > 32
    with pytest.raises(ValueError, match=r"row 1: prompt \+ rejected is 42 tokens, longer than "
                                         r"max_len=32; raise the limit or drop such pairs"):
        build_pairs(rows, tok, max_len=32)
    kept = build_pairs(rows, tok, max_len=32, on_overlong="drop")
    assert len(kept) == 1 and kept.dropped == 1 and kept.source_rows.tolist() == [0]
    with pytest.raises(ValueError, match="every one of the 1 pairs is longer than max_len=8"):
        build_pairs(rows[:1], tok, max_len=8, on_overlong="drop")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a", "chosen": "b"}, "column 'rejected' missing in row 0 (1 rows lack it); that "
                                     "row has: chosen, prompt"),
    ({"prompt": "a", "chosen": [], "rejected": "c"},
     "row 0, column 'chosen': a response must be a string or a non-empty list of messages"),
    ({"prompt": "a", "chosen": 4, "rejected": "c"},
     "row 0, column 'chosen': a response must be a string or a non-empty list of messages, "
     "got int"),
    ({"prompt": "a", "chosen": "b", "rejected": [{"role": "tool", "content": "x"}]},
     "row 0, column 'rejected': message 0: expected {'role': one of assistant, user"),
    ({"prompt": "a", "chosen": [{"role": "system", "content": "x"}], "rejected": "c"},
     "row 0, column 'chosen': message 0: expected {'role': one of assistant, user"),
    ({"prompt": "a", "chosen": [{"role": "user", "content": "x"},
                                {"role": "assistant", "content": "y"}], "rejected": "c"},
     "row 0, column 'chosen': message 0: a response starts with the assistant's turn"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"},
     "row 0, column 'prompt': message 0: expected {'role': one of system, user, assistant"),
    ({"prompt": {"text": "a"}, "chosen": "b", "rejected": "c"},
     "row 0, column 'prompt': a prompt must be a string or a non-empty list of messages"),
])
def test_bad_rows_name_the_row_and_column(tok, row, message):
    with pytest.raises(ValueError) as e:
        build_pairs([row], tok, max_len=64)
    assert message in str(e.value)


def test_an_empty_prompt_without_chat_is_an_error(tok):
    with pytest.raises(ValueError, match="row 0, column 'prompt': the prompt is empty"):
        build_pairs([{"prompt": "", "chosen": "b", "rejected": "c"}], tok, max_len=8, chat=False)
    with pytest.raises(ValueError, match="no rows"):
        build_pairs([], tok, max_len=8)
