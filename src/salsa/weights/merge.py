"""The streaming merge engine: model directories merged tensor by tensor, piece by piece, into sharded safetensors.

The merge math is `weights.average`, the methods' rules `weights.spec`, the checks `weights.checks`, the reading
(with one-pass SHA-256) `weights.reader` and `weights.stream`. Linear, expo and liti read every ingredient once.
Slerp reads the two twice: a first pass adds up each tensor's dot product and norms piece by piece, which fix its
two weights; the second writes the weighted sum. A non-finite value in any ingredient, or integer buffers that
disagree, stop the merge before that shard lands. Peak memory is a few CHUNK_ELEMENTS-sized buffers plus at most
64 MB of read bytes waiting to be hashed, independent of the number of models and of their size.

Used by the soup stage (`salsa.soup`, which adds the provenance) and by WARM (`salsa.reward`, `average_into`).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from salsa.errors import SoupError
from salsa.io import SOUP_RECORD, atomic_file, atomic_write_json, read_json
from salsa.weights.average import cosine, dot_and_norms, slerp_weights, weighted_average
from salsa.weights.checks import check_configs, check_same_tensors, check_tokenizers, tied_names
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


def average_into(models: Sequence[Path], out: Path) -> None:
    """The uniform average of model directories streamed into the directory `out`, with the first one's config and
    tokenizer: a soup without provenance, for a stage that averages models it trained itself (WARM's reward models)."""
    indexes = mergeable_indexes(models)
    write_merge(indexes, resolve_merge(len(models)), out, None, parse_size("2GB"), hashed=[])
    copy_model_files(models[0], out, None)


def mergeable_indexes(sources: Sequence[Path]) -> list[dict[str, TensorEntry]]:
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


def write_merge(
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


def copy_model_files(source: Path, out: Path, dtype: str | None) -> None:
    """Config, generation config and tokenizer files of the first ingredient (not its weights or logs)."""
    for item in source.iterdir():
        if item.is_file() and item.name not in NOT_COPIED and item.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copy2(item, out / item.name)
    if dtype is not None:
        config = read_json(out / "config.json")
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        atomic_write_json(out / "config.json", config)
