"""`salsa soup`: the weighted average of K fine-tuned models (or a slerp, ExPO or LITI merge of two), streamed tensor
by tensor into a model directory.

The math lives in `salsa.weights.average`, the methods' rules in `salsa.weights.spec`, the checks in
`salsa.weights.checks`, the reading (with one-pass SHA-256) in `salsa.weights.reader` and `salsa.weights.stream`,
LoRA ingredients in `salsa.weights.lora`. This module runs them in order: check everything, then merge piece by
piece into sharded safetensors, and write `soup.json` (method and parameter, ingredients with absolute paths and
the SHA-256 of their files, weights, salsa version) and `mergekit.yaml`: the same merge, which mergekit reproduces
bit for bit (linear, expo, liti) or to float32 rounding (slerp); a LoRA ingredient appears as `BASE+ADAPTER`,
mergekit's form. Reproduce it with `mergekit-yaml mergekit.yaml OUT --lora-merge-cache DIR`.
Linear, expo and liti read every ingredient once. Slerp reads the two twice: a first pass adds up each tensor's
dot product and norms piece by piece, which fix its two weights; the second writes the weighted sum.
A non-finite value in any ingredient, or integer buffers that disagree, stop the soup before that shard lands.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml

from salsa.config import SoupConfig
from salsa.engine import Stage, run_stage
from salsa.errors import SoupError
from salsa.io import SOUP_RECORD, atomic_file, atomic_write_json, atomic_write_text, read_json
from salsa.version import __version__
from salsa.weights.average import cosine, dot_and_norms, slerp_weights, weighted_average
from salsa.weights.checks import check_configs, check_same_tensors, check_tokenizers, tied_names
from salsa.weights.lora import is_lora_dir, lora_base, merge_lora_ingredient
from salsa.weights.reader import INDEX_FILE, HashingReader, tensor_index
from salsa.weights.spec import Merge, parse_size, resolve_merge
from salsa.weights.stream import TensorEntry, read_tensor, write_streaming

# Files of an ingredient directory that describe the training run, not the model.
NOT_COPIED = {
    INDEX_FILE, SOUP_RECORD, "mergekit.yaml", "salsa_complete.json", "salsa_stage.json", "metrics.jsonl", "config.yaml",
}  # fmt: skip
# Tensors are averaged in pieces of this many elements (4 MB of float32: fits a core's cache).
CHUNK_ELEMENTS = 1 << 20
OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["average_into", "build_soup", "build_soup_from_config"]


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

    Peak memory is a few CHUNK_ELEMENTS-sized buffers plus at most 64 MB of read bytes waiting to be hashed,
    independent of K and of the model's size.
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
        indexes = _mergeable_indexes(sources)
        first = indexes[0]

        # Digests of files that outlive the soup: the weights read, or a LoRA ingredient's adapter and base.
        recorded = {d: _weight_files(index) for d, index in zip(dirs, indexes, strict=True) if d not in bases}
        recorded |= {d: sorted(f for f in d.iterdir() if f.is_file()) for d in bases}
        recorded |= {Path(b): _weight_files(tensor_index(Path(b))) for b in bases.values() if Path(b).is_dir()}
        files = sorted({f for fs in recorded.values() for f in fs})
        digests = _write_merge(indexes, merge, out, config.dtype, parse_size(config.max_shard_size), files)
        _copy_model_files(sources[0], out, config.dtype)

        provenance = _provenance(dirs, merge, bases, {d: {f: digests[f] for f in fs} for d, fs in recorded.items()})
        provenance["dtype"] = config.dtype or "ingredients"
        atomic_write_json(out / SOUP_RECORD, provenance)
        models = [f"{bases[d]}+{d.resolve()}" if d in bases else str(d.resolve()) for d in dirs]
        atomic_write_text(out / "mergekit.yaml", mergekit_yaml(models, merge, config.dtype or _dtype_name(first)))
    stage.finish({"ingredients": len(dirs)})


def average_into(models: Sequence[Path], out: Path) -> None:
    """The uniform average of model directories streamed into the directory `out`, with the first one's config and
    tokenizer: a soup without provenance, for a stage that averages models it trained itself (WARM's reward models)."""
    indexes = _mergeable_indexes(models)
    _write_merge(indexes, resolve_merge(len(models)), out, None, parse_size("2GB"), hashed=[])
    _copy_model_files(models[0], out, None)


def _mergeable_indexes(sources: Sequence[Path]) -> list[dict[str, TensorEntry]]:
    """The tensor index of every model, checked for a merge before anything is written: one architecture, one
    tokenizer vocabulary, the same tensor names, shapes and kinds (a tied output projection is left out)."""
    skip = tied_names(check_configs(list(sources)))
    check_tokenizers(list(sources))
    indexes = [{k: v for k, v in tensor_index(d).items() if k not in skip} for d in sources]
    first = indexes[0]
    for d, index in zip(sources[1:], indexes[1:], strict=True):
        check_same_tensors(list(first), {k: v.shape for k, v in first.items()}, index, str(d))
        for name, entry in index.items():
            if entry.is_float != first[name].is_float:
                raise SoupError(f"{d}: tensor '{name}' is {entry.dtype}, the first model has {first[name].dtype}")
    return indexes


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


def _nonfinite_message(indexes: list[dict[str, TensorEntry]], name: str, start: int, stop: int) -> str:
    """Which ingredient holds the NaN or infinity found while averaging elements [start, stop) of `name`."""
    for index in indexes:
        piece = read_tensor(index[name]).reshape(-1)[start:stop]
        if not torch.isfinite(piece.float()).all():
            return f"{index[name].file.parent}: tensor '{name}' holds NaN or infinite values; refusing to average it"
    return f"the average of tensor '{name}' overflows the float32 range; check the weights"


def _plan_shards(layout: list[tuple[str, torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[list]:
    shards: list[list] = [[]]
    size = 0
    for item in layout:
        nbytes = math.prod(item[2]) * item[1].itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def _dtype_name(index: dict[str, TensorEntry]) -> str:
    float_dtypes = [e.torch_dtype for e in index.values() if e.is_float]
    names = {v: k for k, v in OUTPUT_DTYPES.items()}
    return names.get(float_dtypes[0], "float32") if float_dtypes else "float32"


def _reading_order(index: dict[str, TensorEntry]) -> list[str]:
    """Tensor names by where they sit in the files, so reads are sequential."""
    return sorted(index, key=lambda n: (str(index[n].file), index[n].begin))


def _pieces(entry: TensorEntry) -> Iterator[tuple[int, int]]:
    """[start, stop) of each CHUNK_ELEMENTS-sized piece of a flattened tensor."""
    numel = math.prod(entry.shape)
    for start in range(0, numel, CHUNK_ELEMENTS):
        yield start, min(numel, start + CHUNK_ELEMENTS)


def _slerp_first_pass(indexes: list[dict[str, TensorEntry]], t: float, reader: HashingReader) -> dict[str, list[float]]:
    """Slerp's first pass: each float tensor's dot product and norms, added up piece by piece, fix its two weights."""
    first, second = indexes
    weights = {}
    for name in _reading_order(first):
        if not first[name].is_float:
            continue
        sums = torch.zeros(3, dtype=torch.float64)
        for start, stop in _pieces(first[name]):
            sums += dot_and_norms(reader.read(first[name], start, stop), reader.read(second[name], start, stop))
            if not torch.isfinite(sums).all():
                raise SoupError(_nonfinite_message(indexes, name, start, stop))
        weights[name] = slerp_weights(cosine(sums), t)
    return weights


def _write_merge(
    indexes: list[dict[str, TensorEntry]],
    merge: Merge,
    out: Path,
    dtype: str | None,
    max_bytes: int,
    hashed: list[Path],
) -> dict[Path, str]:
    """Stream the merge into shards under `out`; returns the SHA-256 of the `hashed` files (hashed on the way while
    the ingredients are read the first time)."""
    first = indexes[0]
    names = _reading_order(first)

    def out_dtype(name: str) -> torch.dtype:
        entry = first[name]
        return OUTPUT_DTYPES[dtype] if dtype and entry.is_float else entry.torch_dtype

    layout = [(name, out_dtype(name), first[name].shape) for name in names]
    shards = _plan_shards(layout, max_bytes)
    shard_names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    accumulator, scratch = torch.empty(CHUNK_ELEMENTS), torch.empty(CHUNK_ELEMENTS)
    with ExitStack() as stack:
        reader = HashingReader(stack, max_pending_bytes=64 << 20, workers=min(len(indexes), torch.get_num_threads()))
        per_tensor: dict[str, list[float]] = {}  # slerp's weights differ by tensor; the other methods' do not
        if merge.method == "slerp":
            per_tensor = _slerp_first_pass(indexes, merge.parameters["t"], reader)
            reader.digests(hashed)  # the first pass read every file: finish their hashes; the second pass skips them

        def produce(name: str) -> Iterator[torch.Tensor]:
            # Chunk by chunk: the float32 accumulator stays in the CPU cache across the K ingredients, which
            # is ~3x faster on 2 cores than whole tensors, and memory does not grow with the largest tensor.
            for start, stop in _pieces(first[name]):
                if not first[name].is_float:  # integer buffers are not averaged: every ingredient must agree
                    pieces = [reader.read(index[name], start, stop) for index in indexes]
                    for index, piece in zip(indexes[1:], pieces[1:], strict=True):
                        if not torch.equal(piece, pieces[0]):
                            raise SoupError(
                                f"{index[name].file.parent}: integer tensor '{name}' differs from the first "
                                "ingredient's; integer buffers cannot be averaged, so they must agree"
                            )
                    yield pieces[0]
                    continue
                chunks = (reader.read(index[name], start, stop) for index in indexes)  # one alive at a time
                average = weighted_average(chunks, per_tensor.get(name, merge.weights), accumulator, scratch)
                if not torch.isfinite(average).all():
                    raise SoupError(_nonfinite_message(indexes, name, start, stop))
                yield average.to(out_dtype(name), copy=True)

        for shard, shard_name in zip(shards, shard_names, strict=True):
            with atomic_file(out / shard_name) as tmp:
                write_streaming(tmp, shard, produce)
        digests = reader.digests(hashed)
    if len(shards) > 1:
        total = sum(math.prod(shape) * dt.itemsize for _, dt, shape in layout)
        weight_map = {name: file for shard, file in zip(shards, shard_names, strict=True) for name, _, _ in shard}
        atomic_write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return digests


def _copy_model_files(source: Path, out: Path, dtype: str | None) -> None:
    """Config, generation config and tokenizer files of the first ingredient (not its weights or logs)."""
    for item in source.iterdir():
        if item.is_file() and item.name not in NOT_COPIED and item.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copy2(item, out / item.name)
    if dtype is not None:
        config = read_json(out / "config.json")
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        atomic_write_json(out / "config.json", config)


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
