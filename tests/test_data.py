"""jaxrl_lm.data: reading JSONL / JSON / Parquet / saved `datasets` folders,
chat rendering (the plain template by hand; a Qwen-style template against
transformers' own apply_chat_template token ids), tokenized prompt tables,
over-long prompts never cut, splits and per-epoch batches."""

import json

import numpy as np
import pytest

from jaxrl_lm.data import (PLAIN_TEMPLATE, batch_rows, build_prompts, conversation, read_rows,
                           render_chat, split_rows)
from jaxrl_lm.models import default_policy
from jaxrl_lm.models.tokenizer import char_tokenizer_hf, encode

ROWS = [{"prompt": "2+2?", "answer": "4", "level": 1},
        {"prompt": "10-3?", "answer": "7", "level": 2},
        {"prompt": "6*7?", "answer": "42", "level": 3}]


@pytest.fixture(scope="module")
def tok():
    return default_policy(0)[1]


def test_read_rows_from_every_format(tmp_path):
    jl = tmp_path / "rows.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n\n" + json.dumps(ROWS[2]) + "\n")
    assert read_rows(jl) == ROWS
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps(ROWS))
    assert read_rows(arr) == ROWS
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    assert read_rows(tmp_path / "rows.parquet") == ROWS
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert read_rows(tmp_path / "one") == ROWS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(
        str(tmp_path / "splits"))
    assert read_rows(tmp_path / "splits") == ROWS[:2]  # "train" by default
    assert read_rows(tmp_path / "splits", split="test") == ROWS[2:]


def test_read_rows_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl' holds no rows"):
        read_rows(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="bad.jsonl' line 2: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('[1, 2]\n')
    with pytest.raises(ValueError, match="line 1: expected a JSON object, got list"):
        read_rows(tmp_path / "list.jsonl")
    (tmp_path / "rows.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="unknown data format '.csv'"):
        read_rows(tmp_path / "rows.csv")
    with pytest.raises(ValueError, match="a split .* only be chosen in a saved datasets folder"):
        read_rows(tmp_path / "list.jsonl", split="test")
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "splits"))
    with pytest.raises(ValueError, match="split 'validation' not found; it has train"):
        read_rows(tmp_path / "splits", split="validation")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="not a folder written by datasets' save_to_disk"):
        read_rows(tmp_path / "folder")


def test_plain_template_by_hand(tok):
    msgs = conversation("2+2?", system_prompt="Answer with #### n.")
    assert msgs == [{"role": "system", "content": "Answer with #### n."},
                    {"role": "user", "content": "2+2?"}]
    assert render_chat(tok, msgs) == "Answer with #### n.\nUser: 2+2?\nAssistant:"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "2+2?"}]
    assert render_chat(tok, chat) == "User: hi\nAssistant: yo\nUser: 2+2?\nAssistant:"
    assert render_chat(tok, chat, add_generation_prompt=False).endswith("Assistant: yo\nUser: 2+2?\n")
    # a conversation's own system turn wins over system_prompt
    assert conversation([{"role": "system", "content": "S"}], system_prompt="T")[0]["content"] == "S"
    with pytest.raises(ValueError, match="message 0: expected"):
        conversation([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="string or a non-empty list of messages"):
        conversation(3)
    assert "add_generation_prompt" in PLAIN_TEMPLATE


QWEN_STYLE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_qwen_style_template_ids_equal_transformers():
    """Prompt ids built by build_prompts (render the template, then encode
    without special tokens) equal apply_chat_template(tokenize=True): the
    template's special tokens are single ids, nothing is added twice."""
    tok = char_tokenizer_hf()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = QWEN_STYLE
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "What is 6*7?"}]},
            {"messages": [{"role": "user", "content": "2+2?"}]}]
    got = build_prompts(rows, tok, max_prompt_len=64, prompt_column="messages")
    for r, row in enumerate(rows):
        want = tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True,
                                       return_dict=False)
        want = list(getattr(want, "input_ids", want))
        assert got.ids[r, : got.lengths[r]].tolist() == want
        assert (got.ids[r, got.lengths[r]:] == tok.pad_token_id).all()
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert got.ids[0, 0] == im_start and got.texts[1].endswith("<|im_start|>assistant\n")


def test_build_prompts_table_columns_and_overlong(tok):
    got = build_prompts(ROWS, tok, max_prompt_len=24, columns=("answer", "level"))
    assert len(got) == 3 and got.dropped == 0
    assert got.texts[0] == "User: 2+2?\nAssistant:"
    for r in range(3):
        assert got.ids[r, : got.lengths[r]].tolist() == encode(tok, got.texts[r])
    assert got.columns == {"answer": ["4", "7", "42"], "level": [1, 2, 3]}
    plain = build_prompts(ROWS, tok, max_prompt_len=8, chat=False, system_prompt=None)
    assert plain.texts == ("2+2?", "10-3?", "6*7?") and plain.ids.shape == (3, 8)
    # "User: 10-3?\nAssistant:" is 22 characters: over a limit of 21
    with pytest.raises(ValueError, match="row 1: its prompt is 22 tokens, longer than "
                                         "max_prompt_len=21"):
        build_prompts(ROWS, tok, max_prompt_len=21)
    dropped = build_prompts(ROWS, tok, max_prompt_len=21, on_overlong="drop", columns=("answer",))
    assert dropped.dropped == 1 and dropped.columns["answer"] == ["4", "42"]
    assert dropped.source_rows.tolist() == [0, 2]
    with pytest.raises(ValueError, match="every one of the 3 prompts is longer"):
        build_prompts(ROWS, tok, max_prompt_len=5, on_overlong="drop")
    with pytest.raises(ValueError, match="column 'answer' missing in row 1 .1 rows lack it.; "
                                         "that row has: prompt"):
        build_prompts([ROWS[0], {"prompt": "x"}], tok, max_prompt_len=24, columns=("answer",))
    with pytest.raises(ValueError, match="on_overlong='cut': must be one of error, drop"):
        build_prompts(ROWS, tok, max_prompt_len=24, on_overlong="cut")
    with pytest.raises(ValueError, match="row 0, column 'prompt': without a chat template"):
        build_prompts([{"prompt": [{"role": "user", "content": "x"}]}], tok, max_prompt_len=24,
                      chat=False)


def test_split_and_epoch_batches():
    rows = [{"i": i} for i in range(10)]
    train, held = split_rows(rows, 0.2, seed=3)
    assert len(train) == 8 and len(held) == 2
    assert sorted(r["i"] for r in train + held) == list(range(10))
    assert split_rows(rows, 0.2, seed=3) == (train, held)
    whole, none = split_rows(rows, 0.0)
    assert none == [] and sorted(r["i"] for r in whole) == list(range(10))
    with pytest.raises(ValueError, match="leaves no train or no eval row"):
        split_rows(rows[:1], 0.5)
    # every epoch visits each of n rows once; batches may span two epochs
    n, b = 7, 3
    seq = np.concatenate([batch_rows(s, b, n, seed=1) for s in range(7)])  # 21 = 3 epochs
    for e in range(3):
        assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
    assert not (seq[:n] == seq[n:2 * n]).all()  # a new order each epoch
    np.testing.assert_array_equal(batch_rows(4, b, n, seed=1), seq[12:15])
    np.testing.assert_array_equal(batch_rows(2, b, n, shuffle=False), [6, 0, 1])
