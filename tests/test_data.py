import json

import pytest

from salsa.data import Conversation, load_records, parse_sft_rows
from salsa.errors import DataError
from salsa.tokenization import IGNORE_INDEX, collate, render_prompt, tokenize_conversation


def _conversation():
    return Conversation([{"role": "user", "content": "Review a bakery."}], "Lovely bread and kind staff.")


def test_labels_mask_exactly_prompt_and_padding(tokenizer):
    conv = _conversation()
    example = tokenize_conversation(tokenizer, conv, max_length=256)
    prompt_len = len(tokenizer(render_prompt(tokenizer, conv.prompt_messages), add_special_tokens=False)["input_ids"])
    labels, ids = example["labels"], example["input_ids"]
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert all(label != IGNORE_INDEX for label in labels[prompt_len:])
    # The completion ends with the chat template's end-of-turn token, so the model learns to stop.
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids[prompt_len:]

    short = tokenize_conversation(tokenizer, Conversation(conv.prompt_messages, "Fine."), max_length=256)
    batch = collate([example, short], tokenizer.pad_token_id)
    n_short = len(short["input_ids"])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, n_short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][1, n_short:] == 0).all()
    assert (batch["attention_mask"][1, :n_short] == 1).all()
    assert batch["labels"][1, :n_short].tolist() == short["labels"]


def test_whole_sequence_loss_option_keeps_prompt_labels(tokenizer):
    example = tokenize_conversation(tokenizer, _conversation(), max_length=256, completion_only_loss=False)
    assert example["labels"] == example["input_ids"]


def test_truncation_keeps_labels_aligned(tokenizer):
    example = tokenize_conversation(tokenizer, _conversation(), max_length=20)
    assert len(example["input_ids"]) == len(example["labels"]) == 20


def test_messages_format_uses_last_assistant_turn(tokenizer):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        }
    ]
    (conv,) = parse_sft_rows(rows, "mem")
    assert conv.completion == "Hello!"
    assert [m["role"] for m in conv.prompt_messages] == ["system", "user"]


def test_jsonl_parquet_and_datasets_dir_load_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for source in (jsonl, tmp_path / "d.parquet", tmp_path / "ds"):
        loaded, _ = load_records(str(source))
        assert [(r["prompt"], r["completion"]) for r in loaded] == [(r["prompt"], r["completion"]) for r in rows]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a"}', "row 2: missing field 'completion'"),
        (
            '{"prompt": "a", "completion": 3}',
            "row 2: field 'completion' must be a string or a list of chat messages, got int",
        ),
        ('{"prompt": "a", "completion": "b"', "row 2: not valid JSON"),
        ('{"text": 3}', "row 2: field 'text' must be a string, got int"),
        ('{"input": "a"}', "row 2: expected fields 'messages', 'prompt' and 'completion', or 'text'"),
        ('{"messages": [{"role": "user", "content": "a"}]}', "row 2: field 'messages' must end with an assistant"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]}', "messages[0].content"),
        ('{"prompt": "  ", "completion": "b"}', "row 2: field 'prompt' is empty"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "completion": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        parse_sft_rows(*load_records(str(path)))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_and_unknown_builtin():
    with pytest.raises(DataError, match="does not exist"):
        load_records("/nonexistent/data.jsonl")
    with pytest.raises(DataError, match="unknown built-in dataset"):
        load_records("builtin:nope")


def test_builtin_reviews_is_deterministic_and_balanced():
    rows, _ = load_records("builtin:reviews")
    again, _ = load_records("builtin:reviews")
    assert rows == again
    negative = [r for r in rows if "negative" in r["prompt"]]
    assert len(negative) * 2 == len(rows)
