"""What every training stage records and refuses: metrics logs, and non-finite numbers.

`MetricsLog` writes one JSON line per step to `metrics.jsonl` (RL's completions to `completions.jsonl`) and the same
to the trackers the stage reports to (TensorBoard by default), from the main process only; a resumed stage first
drops what the interrupted run logged after its checkpoint.
`FiniteGuard` stops a stage at the first NaN or infinity in a loss, a reward or a statistic (naming the step
and the quantity), or skips that step when the user asked for it, counting the skips.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, TextIO

import torch
from rich.markup import escape

from salsa import runtime
from salsa.errors import SalsaError, naming
from salsa.io import atomic_write_text, read_jsonl
from salsa.progress import console
from salsa.trackers import open_trackers

ON_NONFINITE = ("stop", "skip")


class NonFiniteError(SalsaError):
    """A loss, reward, statistic or weight became NaN or infinite."""


class MetricsLog:
    """`metrics.jsonl`, tables as `<name>.jsonl`, and both to the trackers of `config.report_to` (salsa.trackers);
    a no-op on processes other than the main one."""

    def __init__(self, folder: Path, prefix: str, config: Any, resume_step: int = 0, enabled: bool = True):
        self.enabled, self.prefix, self.folder, self.resume_step = enabled, prefix, Path(folder), resume_step
        self.path = self.folder / "metrics.jsonl"
        if not enabled:
            return
        self._file = self._open(self.path)
        self._tables: dict[str, TextIO] = {}
        self._trackers = open_trackers(config.report_to, self.folder, dataclasses.asdict(config), resume_step)

    def _open(self, path: Path) -> TextIO:
        """`path` for appending, without the records the interrupted run logged after its checkpoint."""
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= self.resume_step] if path.is_file() else []
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        """One step's record; it must hold `step`. Its numbers go to the trackers as `prefix/key`."""
        if not self.enabled:
            return
        with naming(self.path):
            self._file.write(json.dumps(record, default=float) + "\n")
            self._file.flush()
        scalars = {
            f"{self.prefix}/{key}": value
            for key, value in record.items()
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
        }
        for tracker in self._trackers:
            tracker.scalars(scalars, record["step"])

    def table(self, name: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Rows of text and numbers at `step`: one line each in `<name>.jsonl`, and a table `prefix/name` in the
        trackers."""
        if not self.enabled:
            return
        path = self.folder / f"{name}.jsonl"
        if name not in self._tables:
            self._tables[name] = self._open(path)
        with naming(path):
            self._tables[name].write("".join(json.dumps({"step": step, **row}) + "\n" for row in rows))
            self._tables[name].flush()
        for tracker in self._trackers:
            tracker.table(f"{self.prefix}/{name}", rows, step)

    def close(self) -> None:
        if self.enabled:
            for file in [self._file, *self._tables.values()]:
                file.close()
            for tracker in self._trackers:
                tracker.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_nonfinite(value) -> str | None:
    """'nan' / 'inf' (with the index of the first bad element of a tensor), or None when all finite."""
    if isinstance(value, torch.Tensor):
        bad = ~torch.isfinite(value.detach())
        if not bad.any():
            return None
        index = tuple(int(i) for i in bad.nonzero()[0])
        element = float(value.detach()[index])
        return f"{element} at index {index[0] if len(index) == 1 else index}"
    return None if value is None or math.isfinite(value) else str(float(value))


class FiniteGuard:
    """Checks the numbers of a step: stop on the first non-finite one, or skip the step when `policy` is 'skip'."""

    def __init__(self, stage: str, policy: str = "stop"):
        self.stage, self.policy, self.skipped = stage, policy, 0

    def ok(self, step: int, **values) -> bool:
        """True when every value is finite. Otherwise raise (policy 'stop') or count a skip and return False.

        Every process decides the same: a non-finite value on any one of them stops or skips the step on all.
        """
        found = next(((name, p) for name, v in values.items() if (p := _first_nonfinite(v)) is not None), None)
        anywhere = found is not None
        if runtime.world_size() > 1:
            anywhere = bool(runtime.all_sum(torch.tensor(float(anywhere))) > 0)
        if not anywhere:
            return True
        name, problem = found or ("a value", "on another process")
        message = f"{self.stage} step {step}: {name} is not finite ({problem})"
        if self.policy == "stop":
            raise NonFiniteError(
                f"{message}; nothing was saved from this step. Lower the learning rate, check the "
                f"reward, or set {self.stage}.on_nonfinite=skip to skip such steps"
            )
        self.skipped += 1
        console.print(f"[yellow]warning:[/] {escape(message)}; step skipped ({self.skipped} so far)")
        return False


def check_finite_weights(module: torch.nn.Module | dict[str, torch.Tensor], where: str) -> None:
    """Refuse to save weights that hold NaN or infinity."""
    items = module.items() if isinstance(module, dict) else module.named_parameters()
    for name, tensor in items:
        if tensor.is_floating_point() and not torch.isfinite(tensor.detach()).all():
            raise NonFiniteError(f"{where}: weight '{name}' is not finite; refusing to save it")
