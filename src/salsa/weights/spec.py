"""The torch-free rules of a merge, checked with the config before torch loads: methods, weights and shard sizes.

linear  soup = sum_i w_i * theta_i        (uniform w_i = 1/K by default; sum_i w_i = 1)
        line(alpha) = (1 - alpha) * A + alpha * B      (alpha outside [0, 1] extrapolates)
The other methods merge two models, A (the start: SFT, init) and B (the RL policy):
slerp   slerp(A, B; t), per tensor on the arc between them (the weights depend on the tensor: weights.average)
expo    B + alpha (B - A) = -alpha * A + (1 + alpha) * B     (ExPO, arXiv 2404.16792: extrapolate past B)
liti    (1 - eta) * A + eta * B                              (WARP's interpolation towards init, arXiv 2406.16768)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from salsa.errors import SoupError

# Each method and the settings it reads (by their config names).
METHOD_PARAMETERS = {"linear": ("weights", "alpha"), "slerp": ("t",), "expo": ("expo_alpha",), "liti": ("eta",)}
MERGE_METHODS = tuple(METHOD_PARAMETERS)


@dataclass(frozen=True)
class Merge:
    """A checked merge: the method, its parameter as given, and the linear weights it stands for (None for slerp,
    whose two weights are computed for each tensor from the angle between the models' tensors)."""

    method: str
    parameters: dict[str, float]
    weights: list[float] | None


def resolve_merge(
    num_models: int,
    method: str = "linear",
    *,
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
    t: float | None = None,
    eta: float | None = None,
    expo_alpha: float | None = None,
) -> Merge:
    """Check a merge's settings: each parameter only with its method, two models for slerp, expo and liti."""
    if method not in MERGE_METHODS:
        raise SoupError(f"soup.method must be one of {', '.join(MERGE_METHODS)}, got '{method}'")
    given = {"weights": weights, "alpha": alpha, "t": t, "eta": eta, "expo_alpha": expo_alpha}
    for name, value in given.items():
        if value is not None and name not in METHOD_PARAMETERS[method]:
            owner = next(m for m, names in METHOD_PARAMETERS.items() if name in names)
            raise SoupError(f"soup.{name} is a setting of method {owner}, but soup.method is {method}; drop it")
    if method == "linear":
        return Merge("linear", {}, soup_weights(num_models, weights, alpha, allow_extrapolation))
    if allow_extrapolation:
        raise SoupError(
            f"soup.allow_extrapolation is for linear weights; method {method} does not read it ("
            "expo extrapolates by definition, slerp and liti stay between the two models): drop it"
        )
    if num_models != 2:
        raise SoupError(
            f"soup.method {method} merges exactly two models (the start, then the RL policy), got {num_models}"
        )
    (name,) = METHOD_PARAMETERS[method]
    if given[name] is None:
        raise SoupError(f"soup.method {method} needs soup.{name} (--{name.replace('_', '-')} on the command line)")
    value = check_parameter(method, given[name], f"soup.{name}")
    linear_weights = {"slerp": None, "expo": [-value, 1.0 + value], "liti": [1.0 - value, value]}[method]
    return Merge(method, {name: value}, linear_weights)


def check_parameter(method: str, value: float, where: str) -> float:
    """The parameter of a two-model merge, checked: finite; slerp's t and liti's eta in [0, 1]; expo's alpha > 0.
    `where` names the setting in the messages (soup.eta, say)."""
    value = float(value)
    if not math.isfinite(value):
        raise SoupError(f"{where} must be a finite number, got {value}")
    if method in ("slerp", "liti") and not 0.0 <= value <= 1.0:
        raise SoupError(f"{where}={value} lies outside [0, 1]; {method} stays between the two models")
    if method == "expo" and value <= 0:
        raise SoupError(f"{where} must be > 0, got {value} (to move back towards the first model, use liti)")
    return value


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
