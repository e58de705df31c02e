"""The weight math of a merge, apart from any file I/O (as in mergekit), in float32.

linear:  sum_i w_i * theta_i  (the mixing weights w_i are resolved and checked in `weights.spec`)
slerp:   per tensor, with cos(theta) = <a, b> / (|a| |b|) over the flattened tensors,
             slerp(a, b; t) = sin((1 - t) theta) / sin(theta) * a + sin(t theta) / sin(theta) * b,
         a linear merge with two weights of its own for every tensor; (1 - t, t) where a and b are (anti)parallel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

# mergekit's slerp: above this |cos(theta)| the two tensors are too close to parallel for sin(theta) to divide by,
# and a norm at or below SLERP_EPS counts as 1 (a zero tensor is not divided by zero).
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


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


def dot_and_norms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[<a, b>, |a|^2, |b|^2] of two pieces of tensors, in float64 (no overflow, and sums over the pieces of a
    tensor stay exact to float32's precision): what a streamed slerp adds up piece by piece."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return torch.stack([a @ b, a @ a, b @ b])


def cosine(sums: torch.Tensor) -> float:
    """cos(theta) between two tensors from their summed `dot_and_norms`, as mergekit's slerp computes it: a norm at
    or below SLERP_EPS counts as 1."""
    dot, a_squared, b_squared = sums.tolist()
    norm_a, norm_b = (norm if norm > SLERP_EPS else 1.0 for norm in (math.sqrt(a_squared), math.sqrt(b_squared)))
    return dot / (norm_a * norm_b)


def slerp_weights(cos_theta: float, t: float) -> list[float]:
    """The two weights of slerp(a, b; t) given cos(theta): (1 - t, t) on a straight line when the tensors are
    nearly parallel or antiparallel (|cos| > SLERP_DOT_THRESHOLD), as mergekit. (mergekit also clamps cos to
    [-1, 1]; a rounded |cos| above 1 takes the straight line here before acos could see it.)"""
    if abs(cos_theta) > SLERP_DOT_THRESHOLD:
        return [1.0 - t, t]
    theta = math.acos(cos_theta)
    return [math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """slerp(a, b; t) of two whole tensors, in float32 (the in-memory form of the streamed merge)."""
    return weighted_average([a, b], slerp_weights(cosine(dot_and_norms(a, b)), t))
