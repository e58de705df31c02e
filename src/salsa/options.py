"""How a config field is declared: its help, the rule its value must follow, the input it names.

    learning_rate: float = option(3e-5, "peak learning rate", check=above(0))
    data: str = option("runs/data/sft.jsonl", "SFT data", input="sft_data")

The engine checks every rule and every input of a stage before the stage loads a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

from salsa.tasks import BUILTIN_TASKS

# A check returns what is wrong with a value ("must be > 0") or None when it is fine.
Check = Callable[[Any], "str | None"]


def at_least(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be >= {bound}"


def above(bound: float) -> Check:
    return lambda v: None if v > bound else f"must be > {bound}"


def fraction(high_inclusive: bool = False, low_inclusive: bool = True) -> Check:
    """A number in [0, 1) by default; the bounds' inclusion as given."""
    low, high = ("[" if low_inclusive else "("), ("]" if high_inclusive else ")")

    def check(v):
        inside = (v >= 0 if low_inclusive else v > 0) and (v <= 1 if high_inclusive else v < 1)
        return None if inside else f"must lie in {low}0, 1{high}"

    return check


def one_of(*choices: str | int) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def known_task(name: str) -> str | None:
    return None if name in BUILTIN_TASKS else f"must be a built-in task ({', '.join(BUILTIN_TASKS)})"


def option(
    default: Any = None,
    help: str = "",
    factory: Any = None,
    *,
    check: Check | None = None,
    input: str | None = None,
    needed: Callable[[Any], bool] | None = None,
    result: bool = True,
) -> Any:
    """A config field with its help text (shown by `salsa <stage> --help`) and what the engine checks.

    check:  a rule for the value (every element of a list); null values are not checked.
    input:  the field names an input the stage reads, of this kind (see salsa.inputs); checked before any
            model loads, when `needed(config)` (default: always).
    result: False for fields that do not change what the stage produces (checkpoint frequency, say), so
            changing them does not make a finished stage's output stale.
    """
    metadata = {"help": help, "check": check, "input": input, "needed": needed, "result": result}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
