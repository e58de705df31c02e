"""The torch-free rules of a merge, checked with the config before torch loads: mixing weights and shard sizes.

soup = sum_i w_i * theta_i        (uniform w_i = 1/K by default; sum_i w_i = 1)
line(alpha) = (1 - alpha) * A + alpha * B      (alpha outside [0, 1] extrapolates)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from salsa.errors import SoupError


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


def parse_size(text: str) -> int:
    """'500MB' / '2GB' / '1.5GiB' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    cleaned = text.strip().upper()
    number = cleaned.rstrip("KMGIB")
    unit = cleaned[len(number) :]
    if unit not in units:
        raise SoupError(f"max_shard_size '{text}' is not a size; write for example 500MB or 2GB")
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise SoupError(f"max_shard_size '{text}' is not a size; write for example 500MB or 2GB") from None
