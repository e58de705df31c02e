"""Reading and validating datasets: rows in, checked conversations, prompts and preference pairs out.

Sources: a JSONL or Parquet file, a `datasets` directory (`save_to_disk`) or hub id, a `builtin:<task>`
name, or rows already in memory. Rows come in TRL's formats (strings or chat messages; see `parse_sft_rows`,
`parse_preference_rows`, `load_prompts`); a prompt of several turns is kept whole. A row salsa cannot represent is
an error naming its file, row number and field, never a silent truncation. Nothing here needs torch: the engine
checks a stage's data with it before any model (or library) loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salsa.errors import DataError
from salsa.tasks import builtin_split


def hub_source(source: str) -> tuple[str, str | None, str | None]:
    """`hub:ORG/NAME`, `hub:ORG/NAME:SPLIT` or `hub:ORG/NAME:CONFIG:SPLIT` -> (name, config, split)."""
    parts = source.removeprefix("hub:").split(":")
    if len(parts) > 3 or not all(parts):
        raise DataError(
            f"'{source}': write a hub dataset as hub:ORG/NAME, hub:ORG/NAME:SPLIT or hub:ORG/NAME:CONFIG:SPLIT"
        )
    name, config, split = parts[0], parts[1] if len(parts) == 3 else None, parts[-1] if len(parts) > 1 else None
    return name, config, split


def load_records(source: str | Sequence[dict[str, Any]], split: str = "train") -> tuple[list[dict], str]:
    """Read rows from any supported source; returns the rows and a name for error messages.

    Sources: a JSONL file, a JSON file (an array of objects, or JSON lines), a Parquet file, a `datasets`
    directory (save_to_disk), `hub:ORG/NAME[:CONFIG][:SPLIT]` or a plain hub id (with `split`), `builtin:<task>`.
    """
    if not isinstance(source, str):
        return [dict(r) for r in source], "<in-memory rows>"
    if source.startswith("builtin:"):
        return builtin_split(source.removeprefix("builtin:"), split), source
    if source.startswith("hub:"):
        name, config, hub_split = hub_source(source)
        return _load_dataset(source, name, config, hub_split or split), source
    path = Path(source)
    if path.suffix == ".json":
        return _read_json(path), str(path)
    if path.suffix == ".jsonl" or (path.exists() and path.is_file() and path.suffix != ".parquet"):
        return _read_jsonl(path), str(path)
    if path.suffix == ".parquet":
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        import pyarrow.parquet as pq  # seconds to import: only Parquet files need it

        try:
            return pq.read_table(path).to_pylist(), str(path)
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    import datasets  # seconds to import: JSONL, Parquet and built-in data never load it

    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise DataError(
                f"{path} is a directory but not a saved `datasets` dataset (no dataset_info.json / "
                "dataset_dict.json); pass a JSONL or Parquet file, or a directory written by save_to_disk"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{source}: no split '{split}' (has {', '.join(loaded)})")
            loaded = loaded[split]
        return loaded.to_list(), source
    return _load_dataset(source, source, None, split), source


def _load_dataset(source: str, name: str, config: str | None, split: str) -> list[dict]:
    import datasets  # seconds to import: JSONL, Parquet and built-in data never load it

    try:
        return datasets.load_dataset(name, config, split=split).to_list()
    except Exception as e:  # hub errors vary; the user needs the first line
        raise DataError(f"could not load dataset '{source}': {str(e).strip().splitlines()[0]}") from None


def _read_json(path: Path) -> list[dict]:
    """A .json file: an array of row objects, or JSON lines."""
    if not path.is_file():
        raise DataError(f"data file {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not text.lstrip().startswith("["):
        return _read_jsonl(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {number}: expected a JSON object, got {type(row).__name__}")
        row["_row"] = number
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path} row {line_no}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} row {line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} row {line_no}: expected a JSON object, got {type(row).__name__}")
            row["_row"] = line_no
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def row_label(source: str, row: dict, index: int) -> str:
    return f"{source} row {row.get('_row', index + 1)}"


Message = dict[str, str]
# A prompt as the data gives it: a string (one user turn), or chat messages (several turns, a system turn...).
Prompt = str | list[Message]


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text (for a model without a chat template): the turns' contents, one per line."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def prompt_key(prompt: Prompt) -> str:
    """A prompt as a hashable key (messages as their JSON)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _require_str(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
    if not row[key].strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return row[key]


ROLES = ("system", "user", "assistant", "tool")


def _messages(value: Any, field: str, where: str) -> list[dict[str, str]]:
    """Chat messages: a non-empty list of {role, content} with a known role and string content."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of {{role, content}} messages")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise DataError(f"{where}: field '{field}[{j}].role' must be one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field '{field}[{j}].content' is missing or not a string")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text_or_messages(value: Any, field: str, where: str) -> str | list[Message]:
    """A non-empty string, or valid chat messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{field}' is empty")
        return value
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field '{field}' must be a string or a list of chat messages, got {type(value).__name__}"
        )
    return _messages(value, field, where)


def _prompt(value: Any, field: str, where: str) -> Prompt:
    """A prompt: a non-empty string, or messages that end with a user (or tool) turn, every turn kept."""
    prompt = _text_or_messages(value, field, where)
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise DataError(f"{where}: field '{field}' ends with an assistant turn; a prompt ends where the reply begins")
    return prompt


def _reply(value: Any, field: str, where: str) -> str:
    """A reply: a non-empty string, or messages holding exactly one assistant turn (salsa trains one reply)."""
    messages = _text_or_messages(value, field, where)
    if isinstance(messages, str):
        return messages
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(
            f"{where}: field '{field}' must be one assistant message; salsa learns and scores a single reply "
            f"(got {len(messages)} messages: {', '.join(m['role'] for m in messages)})"
        )
    return messages[0]["content"]


@dataclass
class Conversation:
    """A prompt (chat messages) and the assistant's reply that the model learns to produce. A plain-text row
    (`text`, language modelling) has no prompt and is learned whole, without a chat template."""

    prompt_messages: list[dict[str, str]]
    completion: str
    plain_text: bool = False


def parse_sft_rows(rows: list[dict], source: str) -> list[Conversation]:
    """Validate SFT rows in TRL's formats into conversations: `messages` (ending with the assistant's turn),
    `prompt` and `completion` (strings, or messages: any turns, then one assistant turn), or `text`."""
    out = []
    for i, row in enumerate(rows):
        where = row_label(source, row, i)
        if "messages" in row:
            messages = _messages(row["messages"], "messages", where)
            if messages[-1]["role"] != "assistant":
                raise DataError(f"{where}: field 'messages' must end with an assistant turn")
            if len(messages) < 2:
                raise DataError(f"{where}: field 'messages' needs a prompt turn before the assistant turn")
            out.append(Conversation(messages[:-1], messages[-1]["content"]))
        elif "prompt" in row or "completion" in row:
            for field in ("prompt", "completion"):
                if field not in row:
                    raise DataError(f"{where}: missing field '{field}'")
            prompt = _prompt(row["prompt"], "prompt", where)
            out.append(Conversation(as_messages(prompt), _reply(row["completion"], "completion", where)))
        elif "text" in row:
            out.append(Conversation([], _require_str(row, "text", where), plain_text=True))
        else:
            raise DataError(f"{where}: expected fields 'messages', 'prompt' and 'completion', or 'text'")
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def load_prompts(source: str) -> list[Prompt]:
    """The `prompt` of every row (RL and evaluation prompts): a string, or chat messages kept whole."""
    rows, name = load_records(source)
    prompts = []
    for i, row in enumerate(rows):
        where = row_label(name, row, i)
        if "prompt" not in row:
            raise DataError(f"{where}: missing field 'prompt'")
        prompts.append(_prompt(row["prompt"], "prompt", where))
    if not prompts:
        raise DataError(f"{name}: no prompts")
    return prompts


@dataclass
class PreferencePair:
    prompt: Prompt
    chosen: str
    rejected: str
    gold_chosen: float | None = None
    gold_rejected: float | None = None


def _split_conversation(value: Any, field: str, where: str) -> tuple[list[Message] | None, str]:
    """A reply, or a conversation (HuggingFaceH4/ultrafeedback_binarized writes the user turn into `chosen`)
    split into its turns up to the reply and the reply."""
    if not isinstance(value, list) or all(isinstance(m, dict) and m.get("role") == "assistant" for m in value):
        return None, _reply(value, field, where)
    messages = _messages(value, field, where)
    last = max(i for i, m in enumerate(messages) if m["role"] != "assistant")
    return messages[: last + 1], _reply(messages[last + 1 :], field, where)


def _agreeing_prompt(given: Prompt, turns: list[list[Message]], where: str) -> Prompt:
    """The prompt of a row with an explicit prompt whose replies may also carry the prompt's turns: those turns,
    every one of them, when they agree with `prompt` (equal, or ending with it as the last user turn)."""
    if not turns:
        return given
    if any(t != turns[0] for t in turns):
        raise DataError(f"{where}: 'chosen' and 'rejected' hold different prompt turns; a pair shares one prompt")
    if as_messages(given) != turns[0] and given != turns[0][-1]["content"]:
        raise DataError(f"{where}: field 'prompt' does not match the turns before the reply in 'chosen'/'rejected'")
    return given if as_messages(given) == turns[0] else turns[0]


def _implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[list[dict[str, str]], str, str]:
    """Split two conversations that share their turns up to the reply (UltraFeedback-binarized style)."""
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise DataError(f"{where}: without a 'prompt' field, 'chosen' and 'rejected' must be conversations (messages)")
    chosen, rejected = _messages(chosen, "chosen", where), _messages(rejected, "rejected", where)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(f"{where}: 'chosen' and 'rejected' share no turn: give the prompt in a 'prompt' field")
    return chosen[:shared], _reply(chosen[shared:], "chosen", where), _reply(rejected[shared:], "rejected", where)


def parse_preference_rows(rows: list[dict], source: str) -> list[PreferencePair]:
    """Validate preference rows in TRL's formats: an explicit `prompt` (a string or messages, every turn kept) with
    `chosen` / `rejected` replies (strings or one assistant message), or an implicit prompt: `chosen` and
    `rejected` conversations whose shared turns are the prompt (an explicit prompt beside them must agree). The two
    replies of a pair must differ."""
    pairs = []
    for i, row in enumerate(rows):
        where = row_label(source, row, i)
        for field in ("chosen", "rejected"):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}' (expected prompt, chosen, rejected)")
        if "prompt" in row:
            prompt = _prompt(row["prompt"], "prompt", where)
            (chosen_turns, chosen), (rejected_turns, rejected) = (
                _split_conversation(row[field], field, where) for field in ("chosen", "rejected")
            )
            prompt = _agreeing_prompt(prompt, [t for t in (chosen_turns, rejected_turns) if t is not None], where)
        else:
            prompt, chosen, rejected = _implicit_prompt(row["chosen"], row["rejected"], where)
        if chosen == rejected:  # a Bradley-Terry or DPO pair must prefer one response over another
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same response; fix or drop the row")
        golds = [row.get("gold_chosen"), row.get("gold_rejected")]
        for field, value in zip(("gold_chosen", "gold_rejected"), golds, strict=True):
            if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
                raise DataError(f"{where}: field '{field}' must be a finite number")
        pairs.append(PreferencePair(prompt, chosen, rejected, *golds))
    if not pairs:
        raise DataError(f"{source}: no rows")
    return pairs
