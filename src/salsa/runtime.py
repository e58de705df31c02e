"""Processes and devices, from one place: Accelerate's process state.

Under `torchrun` / `accelerate launch` every stage runs once per process. On a machine without a GPU a
plain `PartialState()` does not join the processes (each believes it is rank 0 and would write the same
files); `cpu=True` forms the gloo group, so salsa asks for it whenever no GPU is present.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list


def process_state() -> PartialState:
    """The process group of this run (one process when not launched by torchrun / accelerate launch)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def barrier() -> None:
    process_state().wait_for_everyone()


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process."""
    if process_state().num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


@functools.cache
def accelerator() -> Accelerator:
    """The process's one Accelerator (Accelerate allows one state per process; stages share it).

    Mixed precision is not set here but per stage, with `autocast`, so that stages of one `salsa run` may
    differ in precision.
    """
    return Accelerator(cpu=not torch.cuda.is_available())


def compute_dtype(mixed_precision: str) -> torch.dtype | None:
    """'auto': bf16 on a GPU that supports it, else full precision (bf16 on a CPU is slow and lossy)."""
    if mixed_precision == "bf16" or (
        mixed_precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None):
    """Run the forward passes inside in `dtype` (weights and optimizer stay in float32); a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=accelerator().device.type, dtype=dtype)
