"""The weight math of a soup, apart from any file I/O (as in mergekit): sum_i w_i * theta_i, in float32.

The mixing weights w_i are resolved and checked in `weights.spec`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def weighted_average(
    tensors: Iterable[torch.Tensor],
    weights: Sequence[float],
    accumulator: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_i w_i * t_i accumulated in float32, in ingredient order (returned in float32): the arithmetic of
    mergekit's linear merge (an accumulate of t_i * w_i per ingredient), so the two agree bit for bit.

    `tensors` may be a generator: only the accumulator and one ingredient tensor are alive at a time.
    Flat float32 `accumulator` / `scratch` buffers at least as large as the tensors are reused if given.
    """
    total = None
    for tensor, weight in zip(tensors, weights, strict=True):
        shape, numel = tensor.shape, tensor.numel()
        if tensor.dtype != torch.float32:
            # Converting first is ~3x faster on a CPU than a mixed-dtype add_.
            converted = scratch[:numel].view(shape) if scratch is not None else torch.empty(shape)
            tensor = converted.copy_(tensor)
        if total is None:
            total = accumulator[:numel].view(shape) if accumulator is not None else torch.empty(shape)
            torch.mul(tensor, weight, out=total)
        else:
            total.add_(tensor, alpha=weight)
    return total
