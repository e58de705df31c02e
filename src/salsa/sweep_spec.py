"""`eval.sweeps`: families of policies merged in weight space, every point evaluated like a policy (torch-free rules).

    sweeps: {NAME: {method: expo | liti | slerp, models: [A, B], values: [v1, v2, ...]}}

A and B name models the evaluation already has: a policy (its models, seed by seed) or `sft_model` / `soup_model`.
Each value is the method's parameter (`weights.spec`), so each sweep is a curve of merges:

    expo   expo_alpha > 0       B + alpha (B - A)       past the RL policy B, away from its start A (ExPO)
    liti   eta in [0, 1]        (1 - eta) A + eta B     from the start A (0) to the RL policy B (1) (WARP's LITI)
    slerp  t in [0, 1]          the arc from A to B     between two RL policies, tensor by tensor

and names a point NAME@VALUE (`ppo-expo@0.5`). A point holds one merge per seed: seed s of A with seed s of B, or a
single model with every seed of the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from salsa.errors import ConfigError
from salsa.weights.spec import METHOD_PARAMETERS, check_parameter

SWEEP_METHODS = ("expo", "liti", "slerp")
SWEEP_KEYS = ("method", "models", "values")
# The evaluation's own models that a sweep may merge besides its policies.
REFERENCES = ("sft_model", "soup_model")


@dataclass(frozen=True)
class SweepPoint:
    """One merge of a sweep at one value, as model directories: (A, B) for each seed."""

    sweep: str
    method: str
    value: float
    models: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return point_name(self.sweep, self.value)

    @property
    def parameters(self) -> dict[str, float]:
        """The method and its parameter as `soup_state_dict` and `soup_model` take them (t, eta or expo_alpha)."""
        return {"method": self.method, METHOD_PARAMETERS[self.method][0]: self.value}


def point_name(sweep: str, value: float) -> str:
    return f"{sweep}@{value:g}"


def sweep_points(
    sweeps: dict[str, dict], policies: dict[str, list[str]], references: dict[str, str | None]
) -> list[SweepPoint]:
    """Every point of every sweep, in order, after checking each sweep against the evaluation's policies and its
    `references` (sft_model and soup_model: a directory, or None when unset)."""
    models = {**policies, **{name: [path] for name, path in references.items() if path}}
    points = []
    for name, sweep in sweeps.items():
        where = f"eval.sweeps.{name}"
        if not name or any(char in name for char in ":@/"):
            raise ConfigError(f"eval.sweeps: '{name}' cannot name a sweep (empty, or holds : @ or /)")
        if not isinstance(sweep, dict) or sorted(sweep) != sorted(SWEEP_KEYS):
            raise ConfigError(f"{where}: expected {{method, models, values}}, got {sweep!r}")
        if sweep["method"] not in SWEEP_METHODS:
            raise ConfigError(f"{where}.method must be one of {', '.join(SWEEP_METHODS)}, got {sweep['method']!r}")
        pairs = _seed_pairs(sweep["models"], models, where)
        for value in _values(sweep["values"], sweep["method"], where):
            points.append(SweepPoint(name, sweep["method"], value, pairs))
    taken = set(policies)
    for point in points:
        if point.name in taken:
            raise ConfigError(f"eval.sweeps.{point.sweep}: its point {point.name} has the name of another policy")
        taken.add(point.name)
    return points


def _seed_pairs(names: object, models: dict[str, list[str]], where: str) -> tuple[tuple[str, str], ...]:
    """(A, B) model directories seed by seed: seed s of A with seed s of B, or a single model with every seed."""
    if not isinstance(names, list) or len(names) != 2 or names[0] == names[1]:
        raise ConfigError(f"{where}.models must be two different names [A, B], got {names!r}")
    for name in names:
        if name not in models:
            raise ConfigError(
                f"{where}.models: '{name}' is not one of {', '.join(models)} (the policies, and sft_model / soup_model "
                "when they are set)"
            )
    a, b = (models[name] for name in names)
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ConfigError(
            f"{where}.models: {names[0]} has {len(a)} models (seeds) and {names[1]} {len(b)}; give equal numbers, or "
            "one model for either"
        )
    seeds = max(len(a), len(b))
    return tuple((a[s if len(a) > 1 else 0], b[s if len(b) > 1 else 0]) for s in range(seeds))


def _values(values: object, method: str, where: str) -> list[float]:
    """The sweep's values: distinct numbers, each a valid parameter of its method."""
    numeric = isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numeric or not values:
        raise ConfigError(f"{where}.values must be a non-empty list of numbers, got {values!r}")
    checked = [check_parameter(method, v, f"{where}.values") for v in values]
    if len({point_name("", v) for v in checked}) != len(checked):
        raise ConfigError(f"{where}.values must be distinct, got {values!r}")
    return checked
