"""The weight math of a soup, apart from any file I/O (as in mergekit): mixing weights and weighted averages.

soup = sum_i w_i * theta_i        (uniform w_i = 1/K by default; sum_i w_i = 1)
line(alpha) = (1 - alpha) * A + alpha * B      (alpha outside [0, 1] extrapolates)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from salsa.errors import SoupError
from salsa.weights.checks import check_same_tensors


def soup_weights(
    num_models: int,
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
) -> list[float]:
    """Resolve and check the mixing weights: uniform, explicit, or the two-model line at `alpha`."""
    if num_models < 2:
        raise SoupError(f"a soup needs at least two models, got {num_models}")
    if alpha is not None:
        if weights is not None:
            raise SoupError("give either weights or alpha, not both")
        if num_models != 2:
            raise SoupError(f"alpha interpolates between exactly two models, got {num_models}")
        if not 0.0 <= alpha <= 1.0 and not allow_extrapolation:
            raise SoupError(f"alpha={alpha} lies outside [0, 1]; pass --allow-extrapolation to extrapolate")
        return [1.0 - alpha, alpha]
    if weights is None:
        return [1.0 / num_models] * num_models
    weights = [float(w) for w in weights]
    if len(weights) != num_models:
        raise SoupError(f"got {len(weights)} weights for {num_models} models; give one weight per model")
    if not all(math.isfinite(w) for w in weights):
        raise SoupError(f"weights must be finite numbers, got {weights}")
    if not allow_extrapolation:
        if any(w < 0 for w in weights):
            raise SoupError(f"weights must be >= 0, got {weights}; pass --allow-extrapolation for negative weights")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise SoupError(f"weights must sum to 1, got {weights} (sum {sum(weights):.6g})")
    return weights


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


def soup_state_dict(
    sources: Sequence[torch.nn.Module | dict[str, torch.Tensor] | str | Path],
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
) -> dict[str, torch.Tensor]:
    """In-memory soup of loaded models, state dicts or model directories, in the first one's dtypes.

    For the RL stage: build a soup reference without writing it to disk.
    """
    w = soup_weights(len(sources), weights, alpha, allow_extrapolation)
    states = [_as_state_dict(s) for s in sources]
    names = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        check_same_tensors(names, {k: tuple(v.shape) for k, v in states[0].items()}, state, f"source {i}")
    out = {}
    for name in names:
        tensors = [state[name] for state in states]
        if tensors[0].is_floating_point():
            out[name] = weighted_average(tensors, w).to(tensors[0].dtype)
        else:
            out[name] = tensors[0].clone()
    return out


def _as_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in source.state_dict().items()}
    if isinstance(source, dict):
        return source
    from salsa.weights.reader import tensor_index
    from salsa.weights.stream import read_tensor

    index = tensor_index(Path(source))
    return {name: read_tensor(entry) for name, entry in index.items()}
