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
from accelerate.utils import broadcast_object_list, gather_object

from salsa.errors import SalsaError


def process_state() -> PartialState:
    """The process group of this run (one process when not launched by torchrun / accelerate launch)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def barrier() -> None:
    process_state().wait_for_everyone()


def world_size() -> int:
    return process_state().num_processes


def broadcast(value: Any) -> Any:
    """The main process's `value`, on every process."""
    if world_size() == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def my_share(num_items: int) -> list[int]:
    """The item indices this process works on: every world_size-th, starting at its rank."""
    state = process_state()
    return list(range(state.process_index, num_items, state.num_processes))


def my_batches(items: list, batch_size: int) -> list[list]:
    """This process's batches of `items`: the batches one process would make, dealt out in turn. A batch holds the
    same items whatever the number of processes, so it is computed with the shapes of a one-process run; its numbers
    agree with that run's to float rounding (a BLAS product may round differently in another process, e.g. with the
    weights at another memory alignment)."""
    state = process_state()
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    return batches[state.process_index :: state.num_processes]


def gather_dict(local: dict) -> dict:
    """The union of every process's `local` results, on every process (keys are disjoint)."""
    if world_size() == 1:
        return local
    merged: dict = {}
    for part in gather_object([local]):
        merged.update(part)
    return merged


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of `values` over every process (a copy; the input is left alone)."""
    if world_size() == 1:
        return values.detach().clone()
    summed = values.detach().to(process_state().device, copy=True)  # NCCL reduces only GPU tensors
    torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
    return summed.to(values.device)


def all_max(values: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of `values` over every process (a copy)."""
    if world_size() == 1:
        return values.detach().clone()
    largest = values.detach().to(process_state().device, copy=True)
    torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    return largest.to(values.device)


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over the processes, in one flat all-reduce per dtype.

    A rank's loss is its share of the global sum scaled by world / global count, so the average is the
    gradient of the one-process loss over the whole global batch (also when ranks hold unequal shares).
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None and not hasattr(p, "device_mesh")]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)  # gloo has no AVG
        flat /= world_size()
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@functools.cache
def accelerator() -> Accelerator:
    """The process's one Accelerator (Accelerate allows one state per process; stages share it).

    Mixed precision is not set here but per stage, with `autocast`, so that stages of one `salsa run` may
    differ in precision.
    """
    if not torch.cuda.is_available():
        # Bit-identical reruns and resumes on a CPU: a few backward kernels otherwise add up in an order that
        # varies from run to run (measured: two identical RL runs differed by 1e-5 after 4 steps). The
        # deterministic kernels cost little on a CPU; uninitialised memory need not be filled for that.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return Accelerator(cpu=not torch.cuda.is_available())


def compute_dtype(mixed_precision: str) -> torch.dtype | None:
    """'auto': bf16 on a GPU that supports it, else full precision (bf16 on a CPU is slow and lossy)."""
    if mixed_precision == "bf16" or (
        mixed_precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def forward_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype to load a model in that only runs forward (a frozen reference, a policy under evaluation, a
    sampler): the compute precision, which halves its memory in bf16; float32 when there is none."""
    return compute_dtype(mixed_precision) or torch.float32


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm (over every process's shard when sharded); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Whether this backward pass reduces gradients over the processes (off for all but the last micro-batch of
    an accumulation window): DDP's no_sync, FSDP2's requires_gradient_sync."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return accelerator().no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def autocast(dtype: torch.dtype | None):
    """Run the forward passes inside in `dtype` (weights and optimizer stay in float32); a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=accelerator().device.type, dtype=dtype)


# ---------------------------------------------------------------- sharded (FSDP2) and replicated models


def place(model: torch.nn.Module, device: torch.device, sharding: str = "none") -> torch.nn.Module:
    """Put a model on `device`; with `sharding` 'fsdp2' and several processes, shard it with torch's FSDP2:
    each transformer block (every element of a ModuleList) is one unit, the rest of the model the root unit."""
    model.to(device)
    if sharding != "fsdp2" or world_size() == 1:
        return model
    from torch.distributed.fsdp import fully_shard  # seconds to import: only a sharded run loads it

    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)
    return model


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor  # seconds to import: only a process that trains loads it

    return any(isinstance(p, DTensor) for p in module.parameters())


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole CPU copies of a module's trainable weights. A sharded module is gathered (every process must call
    this); the main process receives the weights, the others an empty dict."""
    if not is_sharded(module):
        return {n: p.detach().cpu() for n, p in module.named_parameters() if p.requires_grad}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # sharded only

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(module, options=options)


def load_trainable_state(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole weights (from `trainable_state`) into a module, sharding them if it is sharded."""
    if not weights:
        return
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict  # sharded only

        set_model_state_dict(module, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with whole tensors (gathered from the shards of a sharded `module`)."""
    if not is_sharded(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # sharded only

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # sharded only

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def full_model(module: torch.nn.Module, build) -> torch.nn.Module | None:
    """A whole, unsharded model equal to `module`, on the main process (None elsewhere); `module` itself when it
    is not sharded. `build()` makes an unsharded model of the same architecture to load the gathered weights into."""
    if not is_sharded(module):
        return module if is_main_process() else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # sharded only

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main_process():
        return None
    whole = build()
    whole.load_state_dict(state, strict=False)
    return whole


def check_replicas_agree(*modules: torch.nn.Module, what: str = "weights") -> None:
    """Data-parallel replicas must end identical; a mismatch (a bug, or non-deterministic kernels) is an error
    rather than a silently arbitrary result. Compares a checksum of every replicated weight over the processes."""
    if world_size() == 1:
        return
    parts = [p.detach().double() for m in modules for p in m.parameters() if not is_sharded(m)]
    if not parts:
        return
    local = torch.stack([sum(p.sum() for p in parts), sum((p * p).sum() for p in parts)])
    sums = gather_object([local.tolist()])
    if any(s != sums[0] for s in sums):
        raise SalsaError(f"the {what} differ between the {world_size()} processes (checksums {sums}); please report it")
