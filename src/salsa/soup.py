"""`salsa soup`: the weighted average of K fine-tuned models (or a slerp, ExPO or LITI merge of two), streamed tensor
by tensor into a model directory.

The merge itself is `salsa.weights.merge` (the streaming engine WARM shares), LoRA ingredients `salsa.weights.lora`.
This stage merges LoRA ingredients into full models, runs the engine, and writes `soup.json` (method and parameter,
ingredients with absolute paths and the SHA-256 of their files, weights, salsa version) and `mergekit.yaml`: the same
merge, which mergekit reproduces bit for bit (linear, expo, liti) or to float32 rounding (slerp); a LoRA ingredient
appears as `BASE+ADAPTER`, mergekit's form. Reproduce it with `mergekit-yaml mergekit.yaml OUT --lora-merge-cache DIR`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from salsa.config import SoupConfig
from salsa.engine import Stage, run_stage
from salsa.io import SOUP_RECORD, atomic_write_json, atomic_write_text
from salsa.version import __version__
from salsa.weights.lora import is_lora_dir, lora_base, merge_lora_ingredient
from salsa.weights.merge import OUTPUT_DTYPES, copy_model_files, mergeable_indexes, write_merge
from salsa.weights.reader import tensor_index
from salsa.weights.spec import Merge, parse_size
from salsa.weights.stream import TensorEntry

__all__ = ["build_soup", "build_soup_from_config"]


def build_soup(
    models: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    *,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    method: str = "linear",
    t: float | None = None,
    eta: float | None = None,
    expo_alpha: float | None = None,
) -> Path:
    """Write the weighted average of `models` to `out` (or their `method` merge: slerp with `t`, expo with
    `expo_alpha`, liti with `eta`), streaming a piece of one tensor at a time.

    Peak memory is a few `weights.merge.CHUNK_ELEMENTS`-sized buffers plus at most 64 MB of read bytes waiting to be
    hashed, independent of K and of the model's size.
    """
    config = SoupConfig(
        models=[str(m) for m in models], output_dir=str(out), weights=None if weights is None else list(weights),
        alpha=alpha, allow_extrapolation=allow_extrapolation, dtype=dtype, max_shard_size=max_shard_size,
        method=method, t=t, eta=eta, expo_alpha=expo_alpha,
    )  # fmt: skip
    return build_soup_from_config(config, overwrite)


def build_soup_from_config(config: SoupConfig, overwrite: bool = False) -> Path:
    return run_stage(config, lambda stage: _build(config, stage), overwrite)


def _build(config: SoupConfig, stage: Stage) -> None:
    out, dirs = stage.out, [Path(m) for m in config.models]
    merge = config.merge()
    bases = {d: lora_base(d) for d in dirs if is_lora_dir(d)}
    with tempfile.TemporaryDirectory(dir=out, prefix=".lora-merge.", suffix=".tmp") as merge_dir:
        sources = [
            merge_lora_ingredient(d, Path(merge_dir) / f"ingredient-{i}") if d in bases else d
            for i, d in enumerate(dirs)
        ]
        indexes = mergeable_indexes(sources)
        first = indexes[0]

        # Digests of files that outlive the soup: the weights read, or a LoRA ingredient's adapter and base.
        recorded = {d: _weight_files(index) for d, index in zip(dirs, indexes, strict=True) if d not in bases}
        recorded |= {d: sorted(f for f in d.iterdir() if f.is_file()) for d in bases}
        recorded |= {Path(b): _weight_files(tensor_index(Path(b))) for b in bases.values() if Path(b).is_dir()}
        files = sorted({f for fs in recorded.values() for f in fs})
        digests = write_merge(indexes, merge, out, config.dtype, parse_size(config.max_shard_size), files)
        copy_model_files(sources[0], out, config.dtype)

        provenance = _provenance(dirs, merge, bases, {d: {f: digests[f] for f in fs} for d, fs in recorded.items()})
        provenance["dtype"] = config.dtype or "ingredients"
        atomic_write_json(out / SOUP_RECORD, provenance)
        models = [f"{bases[d]}+{d.resolve()}" if d in bases else str(d.resolve()) for d in dirs]
        atomic_write_text(out / "mergekit.yaml", mergekit_yaml(models, merge, config.dtype or _dtype_name(first)))
    stage.finish({"ingredients": len(dirs)})


def _provenance(dirs: list[Path], merge: Merge, bases: dict[Path, str], digests: dict[Path, dict[Path, str]]) -> dict:
    """soup.json: the method and its parameter; every ingredient's absolute path, weight (none for slerp: its
    weights differ by tensor) and file digests (for LoRA, its adapter and base)."""

    def sha256(directory: Path) -> dict[str, str]:
        return {str(f.relative_to(directory)): digest for f, digest in digests[directory].items()}

    ingredients = []
    for i, d in enumerate(dirs):
        entry = {"path": str(d.resolve())}
        if merge.weights is not None:
            entry["weight"] = merge.weights[i]
        entry["sha256"] = sha256(d)
        if d in bases:
            entry["base"] = bases[d]
            if Path(bases[d]) in digests:  # a local base; a hub base is named by its id alone
                entry["base_sha256"] = sha256(Path(bases[d]))
        ingredients.append(entry)
    return {"salsa_version": __version__, "method": merge.method, "parameters": merge.parameters,
            "ingredients": ingredients}  # fmt: skip


def _weight_files(index: dict[str, TensorEntry]) -> list[Path]:
    return sorted({e.file for e in index.values()})


def _dtype_name(index: dict[str, TensorEntry]) -> str:
    float_dtypes = [e.torch_dtype for e in index.values() if e.is_float]
    names = {v: k for k, v in OUTPUT_DTYPES.items()}
    return names.get(float_dtypes[0], "float32") if float_dtypes else "float32"


def mergekit_yaml(models: Sequence[str], merge: Merge, dtype: str) -> str:
    """The same merge as a mergekit config, computed in float32 and written as `dtype`, as salsa does. Linear, expo
    and liti are mergekit's `linear` with normalize off (the weights as given): it reproduces them bit for bit.
    Slerp is mergekit's `slerp` with the first model as its base (t = 0), equal up to float32 rounding (mergekit
    sums each tensor's dot product in float32 pieces of its own). Paths are absolute: it runs from any directory."""
    if merge.weights is not None:
        config = {
            "merge_method": "linear",
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(models, merge.weights, strict=True)],
            "parameters": {"normalize": False},
        }
    else:
        config = {
            "merge_method": "slerp",
            "base_model": models[0],
            "models": [{"model": m} for m in models],
            "parameters": {"t": merge.parameters["t"]},
        }
    config |= {"dtype": "float32", "out_dtype": dtype}
    header = (
        f"# The soup beside this file ({merge.method}), as a mergekit config. Reproduce it with\n"
        "#   mergekit-yaml mergekit.yaml OUT_DIR --lora-merge-cache CACHE_DIR\n"
        "# (the cache is only needed for LoRA ingredients, written BASE+ADAPTER).\n"
    )
    if merge.method == "slerp":
        header += "# mergekit sums each tensor's dot product in float32 pieces of its own: equal to float32 rounding.\n"
    if merge.method == "expo":
        header += (
            "# ExPO is also mergekit's task_arithmetic with base_model the first model and weight 1 + expo_alpha on\n"
            "# the second: the same model up to float32 rounding; this linear form reproduces it bit for bit.\n"
        )
    return header + yaml.safe_dump(config, sort_keys=False)
