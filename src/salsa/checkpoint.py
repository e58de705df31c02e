"""Training state on disk in formats that cannot run code when read back: safetensors and JSON.

A checkpoint is a directory `checkpoints/step-NNNNNNN/`:

    weights.safetensors     the trained tensors, by name (LoRA: the adapters; RL: policy, value head, ...)
    optimizer.safetensors   every tensor of the optimizer state, as state.<param index>.<key>
    state.json              the optimizer's param groups and scalar state, the scheduler, the stage's own
                            counters (step, data position, ...)
    rng.safetensors         every process's torch CPU (and CUDA) random generator states

`torch.load(..., weights_only=False)` and pickled RNG files would execute whatever a crafted file in a
copied run directory holds; nothing here unpickles. Each checkpoint is written to a temporary sibling and
renamed into place, and older ones are removed once the new one is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from salsa.errors import DataError
from salsa.io import atomic_dir, atomic_write_json, read_json

STATE_FILE = "state.json"


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    counters: dict[str, Any] | None = None,
) -> None:
    """Write one checkpoint directory (atomically), then remove the older `step-*` siblings.

    Every process calls it (their RNG states are gathered); the main process writes. Weights and optimizer
    state are the main process's, which data-parallel training keeps equal on every process.
    """
    from accelerate.utils import gather_object

    from salsa import runtime

    own = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state()
    states = gather_object([own]) if runtime.process_state().num_processes > 1 else [own]
    if runtime.is_main_process():
        rng = {f"{kind}.{rank}": state for rank, states_of in enumerate(states) for kind, state in states_of.items()}
        _write(path, weights, optimizer, scheduler, counters, rng)
    runtime.barrier()


def _write(path: Path, weights, optimizer, scheduler, counters, rng) -> None:
    optimizer_tensors, optimizer_meta = _optimizer_parts(optimizer)
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


def load_checkpoint(
    path: Path, optimizer: torch.optim.Optimizer, scheduler=None, rank: int = 0
) -> tuple[dict, dict[str, Any]]:
    """Restore the optimizer, scheduler and this process's RNG from `path`; returns (saved weights, counters)."""
    try:
        state = read_json(path / STATE_FILE)
        weights = load_file(str(path / "weights.safetensors"))
        optimizer_tensors = load_file(str(path / "optimizer.safetensors"))
        rng = load_file(str(path / "rng.safetensors"))
        optimizer.load_state_dict(_optimizer_state(optimizer_tensors, state["optimizer"]))
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
    return weights, state["counters"]
