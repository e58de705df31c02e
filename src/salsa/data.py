"""Reading and validating datasets: rows in, checked conversations, prompts and preference pairs out.

Sources: a JSONL or Parquet file, a `datasets` directory (`save_to_disk`) or hub id, a `builtin:<task>`
name, or rows already in memory. SFT rows are `prompt`/`completion` pairs or chat `messages` whose last
turn is the assistant's. Every malformed row is reported with its file, row number and field. Nothing here
needs torch: the engine checks a stage's data with it before any model (or library) loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salsa.errors import DataError


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
        from salsa.tasks import builtin_split

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
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist(), str(path)
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    import datasets

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
    import datasets

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


def _require_str(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
    if not row[key].strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return row[key]


@dataclass
class Conversation:
    """A prompt (chat messages) and the assistant's reply that the model learns to produce."""

    prompt_messages: list[dict[str, str]]
    completion: str


def parse_sft_rows(rows: list[dict], source: str) -> list[Conversation]:
    """Validate SFT rows (prompt/completion or messages) into conversations."""
    out = []
    for i, row in enumerate(rows):
        where = row_label(source, row, i)
        if "messages" in row:
            messages = row["messages"]
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
            for j, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise DataError(f"{where}: field 'messages[{j}].role' is missing or not a string")
                if not isinstance(m.get("content"), str):
                    raise DataError(f"{where}: field 'messages[{j}].content' is missing or not a string")
            if messages[-1]["role"] != "assistant":
                raise DataError(f"{where}: field 'messages' must end with an assistant turn")
            if len(messages) < 2:
                raise DataError(f"{where}: field 'messages' needs a prompt turn before the assistant turn")
            prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
            out.append(Conversation(prompt, messages[-1]["content"]))
        elif "prompt" in row or "completion" in row:
            prompt = _require_str(row, "prompt", where)
            completion = _require_str(row, "completion", where)
            out.append(Conversation([{"role": "user", "content": prompt}], completion))
        else:
            raise DataError(f"{where}: expected fields 'prompt' and 'completion', or 'messages'")
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def load_prompts(source: str) -> list[str]:
    """The 'prompt' field of every row (RL and evaluation prompts), each checked to be a non-empty string."""
    rows, name = load_records(source)
    prompts = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{row_label(name, row, i)}: field 'prompt' must be a non-empty string")
        prompts.append(prompt)
    if not prompts:
        raise DataError(f"{name}: no prompts")
    return prompts


@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float | None = None
    gold_rejected: float | None = None


def _response_text(value, field: str, where: str) -> str:
    """A response given as a string or as chat messages (the last assistant turn)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise DataError(f"{where}: field '{field}' must be a non-empty string or a list of chat messages")


def parse_preference_rows(rows: list[dict], source: str) -> list[PreferencePair]:
    """Validate prompt/chosen/rejected rows (UltraFeedback style; responses may be message lists)."""
    pairs = []
    for i, row in enumerate(rows):
        where = row_label(source, row, i)
        for field in ("prompt", "chosen", "rejected"):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}' (expected prompt, chosen, rejected)")
        prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = next((m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"), None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string")
        chosen = _response_text(row["chosen"], "chosen", where)
        rejected = _response_text(row["rejected"], "rejected", where)
        golds = [row.get("gold_chosen"), row.get("gold_rejected")]
        for field, value in zip(("gold_chosen", "gold_rejected"), golds, strict=True):
            if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
                raise DataError(f"{where}: field '{field}' must be a finite number")
        pairs.append(PreferencePair(prompt, chosen, rejected, *golds))
    if not pairs:
        raise DataError(f"{source}: no rows")
    return pairs
