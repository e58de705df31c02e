"""Soups and merges built in memory, for the RL reference, the reward landscape and the evaluation of merge
families: no file is written.

The arithmetic is that of the streamed soup (`weights.average`), so both agree bit for bit for linear, expo and
liti merges (and for slerp where a tensor fits one streamed piece).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from salsa.errors import SoupError
from salsa.models import load_causal_lm
from salsa.weights.average import slerp, weighted_average
from salsa.weights.checks import check_same_tensors
from salsa.weights.reader import tensor_index
from salsa.weights.spec import resolve_merge
from salsa.weights.stream import read_tensor


def soup_state_dict(
    sources: Sequence[torch.nn.Module | dict[str, torch.Tensor] | str | Path],
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
    *,
    method: str = "linear",
    t: float | None = None,
    eta: float | None = None,
    expo_alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """In-memory soup (or `method` merge, as `salsa soup`) of loaded models, state dicts or model directories, in
    the first one's dtypes.

    For the RL stage: build a soup reference without writing it to disk.
    """
    merge = resolve_merge(
        len(sources), method, weights=weights, alpha=alpha, allow_extrapolation=allow_extrapolation, t=t, eta=eta,
        expo_alpha=expo_alpha,
    )  # fmt: skip
    states = [_as_state_dict(s) for s in sources]
    names = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        check_same_tensors(names, {k: tuple(v.shape) for k, v in states[0].items()}, state, f"source {i}")
    out = {}
    for name in names:
        tensors = [state[name] for state in states]
        if not tensors[0].is_floating_point():
            out[name] = tensors[0].clone()
        elif merge.method == "slerp":
            out[name] = slerp(*tensors, merge.parameters["t"]).to(tensors[0].dtype)
        else:
            out[name] = weighted_average(tensors, merge.weights).to(tensors[0].dtype)
    return out


def _as_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in source.state_dict().items()}
    if isinstance(source, dict):
        return source
    index = tensor_index(Path(source))
    return {name: read_tensor(entry) for name, entry in index.items()}


def soup_model(
    models: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
    **merge: str | float,
) -> torch.nn.Module:
    """A causal LM holding the in-memory soup of model directories (for references, the reward landscape and merge
    sweeps); `merge` names another method and its parameter as `soup_state_dict` takes them (method, t, eta,
    expo_alpha)."""
    model = load_causal_lm(str(models[0]))
    missing, unexpected = model.load_state_dict(
        soup_state_dict(models, weights, alpha, allow_extrapolation, **merge), strict=False
    )
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SoupError(
            f"{models[0]}: soup tensors do not match the architecture (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    return model
