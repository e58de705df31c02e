"""TRL's dataset formats, each written as a small file here: every one loads, and a prompt of several turns
reaches the model whole (SFT, reward and DPO pairs, RL prompts), never cut down to one turn."""

import json

import pytest

from salsa.data import (
    as_messages,
    hub_source,
    load_prompts,
    load_records,
    parse_preference_rows,
    parse_sft_rows,
)
from salsa.errors import DataError
from salsa.generation import encode_prompts
from salsa.tokenization import render_prompt, tokenize_conversation

SYSTEM = {"role": "system", "content": "You are a terse critic."}
HI = {"role": "user", "content": "Hi"}
HELLO = {"role": "assistant", "content": "Hello! What shall I review?"}
ASK = {"role": "user", "content": "Review a cafe."}
MULTI_TURN = [SYSTEM, HI, HELLO, ASK]


def _file(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _assistant(text):
    return [{"role": "assistant", "content": text}]


SFT_FORMATS = {
    "language modelling (text)": {"text": "A cafe with good coffee."},
    "prompt-completion strings": {"prompt": "Review a cafe.", "completion": "Good coffee."},
    "prompt-completion messages": {"prompt": MULTI_TURN, "completion": _assistant("Good coffee.")},
    "messages": {"messages": [*MULTI_TURN, *_assistant("Good coffee.")]},
}


@pytest.mark.parametrize("name", SFT_FORMATS)
def test_every_trl_sft_format_loads(tmp_path, tokenizer, name):
    (conversation,) = parse_sft_rows(*load_records(_file(tmp_path, [SFT_FORMATS[name]])))
    row = tokenize_conversation(tokenizer, conversation, max_length=256)
    text = tokenizer.decode(row["input_ids"])
    targets = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])
    if conversation.plain_text:
        assert targets.startswith("A cafe with good coffee.")  # every token is a target
    else:
        assert targets.startswith("Good coffee.")  # only the completion is learned
        assert "Good coffee." not in text[: text.index("Review a cafe.")]
    if name in ("prompt-completion messages", "messages"):
        # Every turn of the prompt, in order, before the reply.
        positions = [text.index(m["content"]) for m in MULTI_TURN]
        assert positions == sorted(positions) and positions[-1] < text.index("Good coffee.")


PREFERENCE_FORMATS = {
    "explicit prompt, strings": {"prompt": "Review a cafe.", "chosen": "Good coffee.", "rejected": "Bad."},
    "explicit prompt, messages": {
        "prompt": MULTI_TURN,
        "chosen": _assistant("Good coffee."),
        "rejected": _assistant("Bad."),
    },  # fmt: skip
    "implicit prompt": {
        "chosen": [*MULTI_TURN, *_assistant("Good coffee.")],
        "rejected": [*MULTI_TURN, *_assistant("Bad.")],
    },  # fmt: skip
    # HuggingFaceH4/ultrafeedback_binarized: a prompt string and whole conversations
    "prompt string beside conversations": {
        "prompt": "Review a cafe.",
        "chosen": [*MULTI_TURN, *_assistant("Good coffee.")],
        "rejected": [*MULTI_TURN, *_assistant("Bad.")],
    },  # fmt: skip
}


@pytest.mark.parametrize("name", PREFERENCE_FORMATS)
def test_every_trl_preference_format_loads_and_keeps_the_whole_prompt(tmp_path, tokenizer, name):
    (pair,) = parse_preference_rows(*load_records(_file(tmp_path, [PREFERENCE_FORMATS[name]])))
    assert (pair.chosen, pair.rejected) == ("Good coffee.", "Bad.")
    single_turn = name == "explicit prompt, strings"
    assert as_messages(pair.prompt) == ([ASK] if single_turn else MULTI_TURN)
    if not single_turn:  # what the reward model and DPO read: the system turn and the last request included
        rendered = render_prompt(tokenizer, as_messages(pair.prompt))
        assert all(m["content"] in rendered for m in MULTI_TURN)


def test_the_issue_case_a_multi_turn_preference_prompt_is_not_cut_to_its_first_user_turn(tmp_path, tokenizer):
    """Once parsed to prompt='Hi': the system turn and the actual request were dropped (DPO too)."""
    from salsa.data import Conversation

    row = {"chosen": [*MULTI_TURN, *_assistant("Good coffee.")], "rejected": [*MULTI_TURN, *_assistant("Bad.")]}
    (pair,) = parse_preference_rows([row], "mem")
    assert pair.prompt == MULTI_TURN
    # DPO tokenises each side as a conversation of the whole prompt and the reply.
    ids = tokenize_conversation(tokenizer, Conversation(as_messages(pair.prompt), pair.chosen), 256)["input_ids"]
    text = tokenizer.decode(ids)
    assert "terse critic" in text and "Review a cafe." in text and text.index("Review a cafe.") < text.index("Good")


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_rl_prompts_may_be_strings_or_conversations_in_jsonl_or_a_json_array(tmp_path, tokenizer, name):
    prompts = load_prompts(_file(tmp_path, [{"prompt": "Review a cafe."}, {"prompt": MULTI_TURN}], name))
    assert prompts == ["Review a cafe.", MULTI_TURN]
    text = tokenizer.decode(encode_prompts(tokenizer, prompts)[1])
    assert all(m["content"] in text for m in MULTI_TURN)


def test_hub_names_with_config_and_split():
    assert hub_source("hub:org/name") == ("org/name", None, None)
    assert hub_source("hub:org/name:test") == ("org/name", None, "test")
    assert hub_source("hub:org/name:default:train_prefs") == ("org/name", "default", "train_prefs")
    with pytest.raises(DataError, match="hub:ORG/NAME:CONFIG:SPLIT"):
        hub_source("hub:org/name:a:b:c")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "completion": [*_assistant("a"), *_assistant("b")]},
         "field 'completion' must be one assistant message; salsa learns and scores a single reply"),
        ({"prompt": [*MULTI_TURN, *_assistant("x")], "completion": "y"},
         "field 'prompt' ends with an assistant turn"),
        ({"messages": [{"role": "critic", "content": "x"}, *_assistant("y")]},
         "field 'messages[0].role' must be one of"),
        ({"prompt": "Hi", "chosen": [*MULTI_TURN, *_assistant("a")], "rejected": [*MULTI_TURN, *_assistant("b")]},
         "field 'prompt' does not match the turns before the reply"),
        ({"chosen": [*_assistant("a")], "rejected": [*_assistant("b")]}, "share no turn"),
    ],
)  # fmt: skip
def test_a_row_salsa_cannot_represent_is_an_error_naming_file_row_and_field(tmp_path, row, message):
    path = _file(tmp_path, [row])
    parse = parse_preference_rows if "chosen" in row else parse_sft_rows
    with pytest.raises(DataError) as info:
        parse(*load_records(path))
    assert f"{path} row 1" in str(info.value) and message in str(info.value)
