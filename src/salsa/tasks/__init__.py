"""Built-in tasks that run offline end to end."""

from __future__ import annotations

from salsa.errors import DataError
from salsa.tasks import reviews

BUILTIN_TASKS = {"reviews": reviews}


def builtin_split(name: str, split: str) -> list[dict]:
    """Rows of a built-in dataset split (`builtin:reviews`)."""
    if name not in BUILTIN_TASKS:
        raise DataError(f"unknown built-in dataset 'builtin:{name}'; available: {', '.join(BUILTIN_TASKS)}")
    if split != "train":
        raise DataError(f"builtin:{name} has only a 'train' split of template demonstrations, not '{split}'")
    return BUILTIN_TASKS[name].demonstrations()


def current_gold_version(task: str | None) -> int | None:
    """The version of a task's gold judge in this salsa, recorded with what it scores (None without a task)."""
    return BUILTIN_TASKS[task].GOLD_JUDGE_VERSION if task else None


def recorded_gold_version(results: dict) -> int | None:
    """The version of the gold judge that scored an evaluation's results (results.json), None without one: results
    that record no version were made before versions were recorded, by version 1."""
    return results["settings"].get("gold_judge_version", 1) if "gold" in results["judges"] else None
