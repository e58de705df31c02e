"""Training state on disk in formats that cannot run code when read back: safetensors and JSON.

A checkpoint is a directory `checkpoints/step-NNNNNNN/`:

    weights.safetensors     the trained tensors, by name (LoRA: the adapters; RL: policy, value head, ...)
    optimizer.safetensors   every tensor of the optimizer state, as state/<parameter index or name>/<key>
    state.json              the optimizer's param groups and scalar state, the scheduler, the stage's own
                            counters (step, data position, ...)
    rng.safetensors         every process's torch CPU (and CUDA) random generator states

`torch.load(..., weights_only=False)` and pickled RNG files would execute whatever a crafted file in a
copied run directory holds; nothing here unpickles. Each checkpoint is written to a temporary sibling and
renamed into place, and older ones are removed once the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from salsa import runtime
from salsa.errors import DataError, SalsaError
from salsa.io import atomic_dir, atomic_write_json, read_json
from salsa.logs import check_finite_weights
from salsa.progress import console

STATE_FILE = "state.json"
# A test setting (tests/test_ray.py, tests/workers.py): the process dies by SIGKILL, as a lost worker would, once its
# checkpoint of this step is on disk; a job of a grid (`salsa.grid`) clears it for its later attempts.
FAULT_KILL_AT_STEP = "SALSA_FAULT_KILL_AT_STEP"


def _optimizer_parts(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state dict as tensors (for safetensors) and the rest (for JSON). Parameters are keyed by
    index (torch's own state dict) or by name (a sharded model's gathered one)."""
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{param}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{param}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _param_key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param, key = name.split("/", 2)
        state.setdefault(_param_key(param), {})[key] = value
    for name, value in meta["scalars"].items():
        param, key = name.split("/", 1)
        state.setdefault(_param_key(param), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict,
    scheduler=None,
    counters: dict[str, Any] | None = None,
) -> None:
    """Write one checkpoint directory (atomically), then remove the older `step-*` siblings.

    Every process calls it (their RNG states are gathered); the main process writes. The weights and optimizer
    state are whole (`runtime.trainable_state`, `runtime.optimizer_state`), the same for every process.
    """
    own = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    states = gather_object([own]) if runtime.process_state().num_processes > 1 else [own]
    if runtime.is_main_process():
        rng = {f"{kind}.{rank}": state for rank, states_of in enumerate(states) for kind, state in states_of.items()}
        _write(path, weights, optimizer_state, scheduler, counters, rng)
    runtime.barrier()


def _write(path: Path, weights, optimizer_state, scheduler, counters, rng) -> None:
    optimizer_tensors, optimizer_meta = _optimizer_parts(optimizer_state)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
        save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {
            "optimizer": optimizer_meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "counters": counters or {},
        }
        atomic_write_json(tmp / STATE_FILE, state)
    for older in path.parent.glob("step-*"):
        if older.name < path.name:
            shutil.rmtree(older, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint under `folder` (a checkpoint is complete once it is renamed into place)."""
    found = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())
    return found[-1] if found else None


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    optimizer_state: dict
    counters: dict[str, Any]


def load_checkpoint(path: Path, scheduler=None, rank: int = 0) -> Checkpoint:
    """Read a checkpoint and restore the scheduler and this process's RNG from it; the caller restores the weights
    and the optimizer state (`runtime.load_trainable_state`, `runtime.load_optimizer_state`)."""
    try:
        state = read_json(path / STATE_FILE)
        weights = load_file(str(path / "weights.safetensors"))
        optimizer_state = _optimizer_state(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        rng = load_file(str(path / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, ValueError) as e:
        raise DataError(
            f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); remove it to restart from the previous one"
        ) from None
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if f"cpu.{rank}" in rng:
        torch.set_rng_state(rng[f"cpu.{rank}"])
    if f"cuda.{rank}" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng[f"cuda.{rank}"])
    return Checkpoint(weights, optimizer_state, state["counters"])


class ExtraState(Protocol):
    """Training state beside the trained module that a checkpoint keeps (a moving KL reference, say)."""

    def state(self) -> dict[str, torch.Tensor]: ...

    def restore(self, weights: dict[str, torch.Tensor]) -> None: ...


class Checkpointer:
    """The periodic checkpoints of one training loop: resume from the newest, save every `every` steps (not at the
    last: the stage's output follows), remove them when the stage is done. SFT, DPO and online RL share it.

    `module` holds every trained tensor; `extra` (a moving reference) adds tensors of its own. `identity` (seed,
    number of processes) must be the same on resume: a run continues only as it was launched.
    """

    def __init__(
        self,
        folder: Path,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        every: int,
        identity: dict[str, Any],
        scheduler=None,
        extra: ExtraState | None = None,
    ):
        self.folder, self.module, self.optimizer, self.every = folder, module, optimizer, every
        self.identity, self.scheduler, self.extra = identity, scheduler, extra

    def resume(self) -> dict[str, Any] | None:
        """Restore everything from the newest checkpoint and return its counters; None when there is none."""
        path = latest_checkpoint(self.folder)
        if path is None:
            return None
        saved = load_checkpoint(path, self.scheduler, runtime.process_state().process_index)
        recorded = {key: saved.counters.get(key) for key in self.identity}
        if recorded != self.identity:
            raise SalsaError(
                f"{path} was saved by a run with {_describe(recorded)}; this one has {_describe(self.identity)}. "
                "Resume it as it was launched, or pass --overwrite to start over"
            )
        extra_names = set(self.extra.state()) if self.extra is not None else set()
        runtime.load_trainable_state(self.module, {k: v for k, v in saved.weights.items() if k not in extra_names})
        runtime.load_optimizer_state(self.module, self.optimizer, saved.optimizer_state)
        if self.extra is not None:
            self.extra.restore(saved.weights)
        console.print(f"resuming {self.folder.parent} from {path.name}")
        return saved.counters

    def save_if_due(self, step: int, total: int, counters: dict[str, Any]) -> None:
        """Checkpoint at every `every`-th step before the last (every process calls it: sharded weights gather)."""
        if not self.every or step % self.every or step >= total:
            return
        path = self.folder / f"step-{step:07d}"
        weights = runtime.trainable_state(self.module)
        if self.extra is not None:
            weights.update(self.extra.state())
        check_finite_weights(weights, str(path))
        state = runtime.optimizer_state(self.module, self.optimizer)
        save_checkpoint(path, weights, state, self.scheduler, {**self.identity, "step": step, **counters})
        if os.environ.get(FAULT_KILL_AT_STEP) == str(step):  # a test's lost worker, once this checkpoint is on disk
            os.kill(os.getpid(), signal.SIGKILL)

    def clear(self) -> None:
        """The stage is done: its checkpoints go (main process)."""
        if runtime.is_main_process():
            shutil.rmtree(self.folder, ignore_errors=True)


def _describe(identity: dict[str, Any]) -> str:
    """{"seed": 0, "world_size": 2} -> "seed 0, 2 processes"."""

    def part(key: str, value: Any) -> str:
        if key == "world_size":
            return f"{value} process" + ("" if value == 1 else "es")
        return f"{key.replace('_', ' ')} {value}"

    return ", ".join(part(key, value) for key, value in identity.items())
