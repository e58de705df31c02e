"""Model soups: the weighted average of K fine-tuned models, streamed tensor by tensor.

    soup = sum_i w_i * theta_i        (uniform w_i = 1/K by default; sum_i w_i = 1)
    line(alpha) = (1 - alpha) * A + alpha * B      (alpha outside [0, 1] extrapolates)

Every check runs before anything is written. The output is a standard Hugging Face model directory with
`soup.json` (ingredients, SHA-256, weights, salsa version) and `mergekit.yaml` (the same linear merge).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml

from salsa.config import SoupConfig
from salsa.errors import SoupError
from salsa.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    digest_key,
    hash_file,
    load_digest_cache,
    read_json,
    save_digest_cache,
)
from salsa.safetensors_stream import (
    Backlog,
    TensorEntry,
    parse_size,
    read_header,
    read_range,
    read_tensor,
    write_streaming,
)

INDEX_FILE = "model.safetensors.index.json"
# config.json keys that do not change what the weights mean.
CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}
# Files of an ingredient directory that describe the training run, not the model.
NOT_COPIED = {INDEX_FILE, "soup.json", "mergekit.yaml", "salsa_complete.json", "metrics.jsonl", "config.yaml"}
# Tensors are averaged in pieces of this many elements (4 MB of float32: fits a core's cache).
CHUNK_ELEMENTS = 1 << 20
# How far ahead of the averaging each ingredient file is fetched from disk.
READ_AHEAD_BYTES = 64 << 20
OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------- the math


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
    """sum_i w_i * t_i accumulated in float32, in ingredient order (returned in float32).

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
        _check_same_tensors(names, {k: tuple(v.shape) for k, v in states[0].items()}, state, f"source {i}")
    out = {}
    for name in names:
        tensors = [state[name] for state in states]
        if tensors[0].is_floating_point():
            out[name] = weighted_average(tensors, w).to(tensors[0].dtype)
        else:
            out[name] = tensors[0].clone()
    return out


def soup_model(
    models: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
) -> torch.nn.Module:
    """A causal LM holding the in-memory soup of model directories (for references and the reward landscape)."""
    from salsa.models import load_causal_lm

    model = load_causal_lm(str(models[0]))
    missing, unexpected = model.load_state_dict(
        soup_state_dict(models, weights, alpha, allow_extrapolation), strict=False
    )
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SoupError(
            f"{models[0]}: soup tensors do not match the architecture (missing {missing}, unexpected {unexpected})"
        )
    model.tie_weights()
    return model


def _as_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in source.state_dict().items()}
    if isinstance(source, dict):
        return source
    index = tensor_index(Path(source))
    return {name: read_tensor(entry) for name, entry in index.items()}


def _check_same_tensors(names, shapes: dict[str, tuple], other, label: str) -> None:
    other_names = set(other)
    missing, extra = sorted(set(names) - other_names), sorted(other_names - set(names))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise SoupError(f"{label} has different tensor names from the first model ({detail})")
    for name in names:
        shape = tuple(other[name].shape)
        if shape != shapes[name]:
            raise SoupError(f"{label}: tensor '{name}' has shape {shape}, the first model has {shapes[name]}")


# ---------------------------------------------------------------- reading ingredients


def tensor_index(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a model directory (single file or sharded), from the safetensors headers."""
    if not model_dir.is_dir():
        raise SoupError(f"{model_dir}: model directory does not exist")
    index_file = model_dir / INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = read_json(index_file)["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise SoupError(f"{index_file}: corrupt index (no weight_map)") from None
        entries = {}
        for shard in sorted(set(weight_map.values())):
            shard_entries, _ = read_header(model_dir / shard)
            entries.update(shard_entries)
        missing = set(weight_map) - set(entries)
        if missing:
            raise SoupError(f"{index_file}: lists tensors absent from its shards, e.g. '{sorted(missing)[0]}'")
        return entries
    single = model_dir / "model.safetensors"
    if single.is_file():
        return read_header(single)[0]
    raise SoupError(f"{model_dir}: no safetensors weights (model.safetensors or {INDEX_FILE}); re-save the model")


def _load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise SoupError(f"{model_dir}: missing config.json; is this a model directory?")
    try:
        return read_json(path)
    except json.JSONDecodeError as e:
        raise SoupError(f"{path}: not valid JSON ({e.msg})") from None


def _check_configs(dirs: list[Path]) -> dict:
    first = _load_config(dirs[0])
    for other_dir in dirs[1:]:
        other = _load_config(other_dir)
        for key in sorted((set(first) | set(other)) - CONFIG_KEYS_IGNORED):
            if first.get(key) != other.get(key):
                raise SoupError(
                    f"{other_dir}/config.json differs from {dirs[0]}/config.json in '{key}' "
                    f"({other.get(key)!r} vs {first.get(key)!r}); soups need one architecture"
                )
    return first


def _vocabulary(model_dir: Path):
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = read_json(path)
    return data.get("model", {}).get("vocab"), [(t["id"], t["content"]) for t in data.get("added_tokens", [])]


def _check_tokenizers(dirs: list[Path]) -> None:
    first_bytes = (dirs[0] / "tokenizer.json").read_bytes() if (dirs[0] / "tokenizer.json").is_file() else None
    first = None
    for other_dir in dirs[1:]:
        path = other_dir / "tokenizer.json"
        if first_bytes is not None and path.is_file() and path.read_bytes() == first_bytes:
            continue  # identical files: nothing to parse
        first = first if first is not None else _vocabulary(dirs[0])
        other = _vocabulary(other_dir)
        if first is not None and other is not None and first != other:
            raise SoupError(
                f"{other_dir} has a different tokenizer vocabulary from {dirs[0]}; soups need one tokenizer"
            )


def _tied_names(config: dict) -> set[str]:
    # With tied embeddings the output projection is the input embedding; writers may or may not store it.
    tied = config.get("tie_word_embeddings", False) or config.get("text_config", {}).get("tie_word_embeddings")
    return {"lm_head.weight"} if tied else set()


class HashingReader:
    """Reads byte ranges of ingredient files and computes each file's SHA-256 from the same bytes, in one pass.

    Hashing runs on worker threads (hashlib releases the GIL), one file per thread at a time, overlapping the
    averaging (SHA-256 runs at ~1.5 GB/s on one core here, slower than reading from the page cache); at most
    `max_pending_bytes` of read buffers wait for it. Bytes the averaging skips (a tied tensor, the header) are
    read for the hash when the reader passes them; a file read out of order is hashed again at the end.
    Digests are cached by (path, size, mtime): a second soup of the same ingredients, or of models salsa
    wrote itself (it records their digests when it saves them), does not hash.
    """

    def __init__(self, stack: ExitStack, max_pending_bytes: int, workers: int):
        self.stack = stack
        # One single-thread pool per worker keeps each file's updates in order; files take turns among them.
        self.pools = [stack.enter_context(ThreadPoolExecutor(max_workers=1)) for _ in range(workers)]
        self.pool_of: dict[Path, ThreadPoolExecutor] = {}
        self.handles: dict[Path, object] = {}
        self.hashers: dict[Path, object] = {}
        self.position: dict[Path, int] = {}
        self.advised: dict[Path, int] = {}
        self.cached = load_digest_cache()
        self.pending = Backlog(max_pending_bytes)

    def _feed(self, file: Path, data) -> None:
        self.pending.add(self.pool_of[file].submit(self.hashers[file].update, data), len(data))

    def _open(self, file: Path):
        handle = self.stack.enter_context(open(file, "rb"))
        self.handles[file] = handle
        if digest_key(file) not in self.cached:
            self.hashers[file] = hashlib.sha256()
            self.position[file] = 0
            self.pool_of[file] = self.pools[len(self.pool_of) % len(self.pools)]
        return handle

    def _read_ahead(self, file: Path, handle, end: int) -> None:
        """Ask the OS to fetch the next READ_AHEAD_BYTES of the file from disk while we average these."""
        if hasattr(os, "posix_fadvise") and self.advised.get(file, 0) < end + READ_AHEAD_BYTES // 2:
            start = max(end, self.advised.get(file, 0))
            os.posix_fadvise(handle.fileno(), start, end + READ_AHEAD_BYTES - start, os.POSIX_FADV_WILLNEED)
            self.advised[file] = end + READ_AHEAD_BYTES

    def read(self, entry: TensorEntry, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of a tensor, flat."""
        file, itemsize = entry.file, entry.torch_dtype.itemsize
        begin, end = entry.begin + start * itemsize, entry.begin + stop * itemsize
        handle = self.handles.get(file) or self._open(file)
        if file in self.position and 0 <= self.position[file] < begin:
            handle.seek(self.position[file])  # header, or bytes the averaging does not use
            self._feed(file, handle.read(begin - self.position[file]))
            self.position[file] = begin
        buffer = read_range(handle, file, begin, end)
        if file in self.position:
            if self.position[file] == begin:
                self._feed(file, buffer.numpy())
                self.position[file] = end
            else:
                self.position[file] = -1  # out of order: hash the whole file at the end
        self._read_ahead(file, handle, end)
        return buffer.view(entry.torch_dtype)

    def digests(self, files: Iterable[Path]) -> dict[Path, str]:
        self.pending.wait()
        result = {}
        for file in files:
            key = digest_key(file)
            if key in self.cached:
                result[file] = self.cached[key]
                continue
            position = self.position.get(file, 0)
            if position < 0 or file not in self.hashers:
                self.hashers[file], position = hashlib.sha256(), 0
            result[file] = self.cached[key] = hash_file(self.hashers[file], file, start=position).hexdigest()
        save_digest_cache(self.cached)
        return result


def _merge_lora_ingredient(adapter_dir: Path, out: Path) -> Path:
    """A LoRA adapter directory becomes the full merged model (base + B A * scale), written to `out`."""
    from peft import PeftConfig, PeftModel

    from salsa.models import load_causal_lm, load_tokenizer

    base_name = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    model = PeftModel.from_pretrained(load_causal_lm(base_name), str(adapter_dir)).merge_and_unload()
    model.save_pretrained(out)
    load_tokenizer(base_name).save_pretrained(out)
    return out


# ---------------------------------------------------------------- writing the soup


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


def build_soup(
    models: Sequence[str | Path],
    out: str | Path,
    weights: Sequence[float] | None = None,
    *,
    alpha: float | None = None,
    allow_extrapolation: bool = False,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
) -> Path:
    """Write the weighted average of `models` to `out`, streaming a piece of one tensor at a time.

    Peak memory is a few CHUNK_ELEMENTS-sized buffers plus at most 64 MB of read bytes waiting to be hashed,
    independent of K and of the model's size.
    """
    from salsa import __version__

    out = Path(out)
    dirs = [Path(m) for m in models]
    mixing = soup_weights(len(dirs), weights, alpha, allow_extrapolation)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise SoupError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got '{dtype}'")
    max_bytes = parse_size(max_shard_size)
    for d in dirs:
        if not d.is_dir():
            raise SoupError(f"{d}: model directory does not exist")
        if out.resolve() == d.resolve():
            raise SoupError(f"the output {out} is one of the ingredients; choose another --out")

    with tempfile.TemporaryDirectory(prefix="salsa-lora-merge-") as merge_dir:
        sources = [
            _merge_lora_ingredient(d, Path(merge_dir) / f"ingredient-{i}")
            if (d / "adapter_config.json").is_file() and not (d / "config.json").is_file()
            else d
            for i, d in enumerate(dirs)
        ]
        config = _check_configs(sources)
        _check_tokenizers(sources)
        skip = _tied_names(config)
        indexes = [{k: v for k, v in tensor_index(d).items() if k not in skip} for d in sources]
        first = indexes[0]
        for d, index in zip(sources[1:], indexes[1:], strict=True):
            _check_same_tensors(list(first), {k: v.shape for k, v in first.items()}, index, str(d))
            for name, entry in index.items():
                if entry.is_float != first[name].is_float:
                    raise SoupError(f"{d}: tensor '{name}' is {entry.dtype}, the first model has {first[name].dtype}")

        with atomic_dir(out) as tmp:
            digests = _write_average(indexes, mixing, tmp, dtype, max_bytes)
            _copy_model_files(sources[0], tmp, dtype)
            provenance = {
                "salsa_version": __version__,
                "method": "linear",
                "dtype": dtype or "ingredients",
                "ingredients": [
                    {
                        "path": str(d),
                        "weight": w,
                        "sha256": {
                            str(f.relative_to(src)): digests[f] for f in sorted({e.file for e in index.values()})
                        },
                    }
                    for d, src, w, index in zip(dirs, sources, mixing, indexes, strict=True)
                ],
            }
            atomic_write_json(tmp / "soup.json", provenance)
            atomic_write_text(tmp / "mergekit.yaml", mergekit_yaml(dirs, mixing, dtype or _dtype_name(first)))
    return out


def _dtype_name(index: dict[str, TensorEntry]) -> str:
    float_dtypes = [e.torch_dtype for e in index.values() if e.is_float]
    names = {v: k for k, v in OUTPUT_DTYPES.items()}
    return names.get(float_dtypes[0], "float32") if float_dtypes else "float32"


def _write_average(
    indexes: list[dict[str, TensorEntry]], weights: list[float], out: Path, dtype: str | None, max_bytes: int
) -> dict[Path, str]:
    """Stream the average into shards under `out`; returns the SHA-256 of every ingredient file."""
    first = indexes[0]
    # Order tensors by where they sit in the first ingredient, so reads are sequential.
    names = sorted(first, key=lambda n: (str(first[n].file), first[n].begin))

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

        def produce(name: str) -> Iterator[torch.Tensor]:
            # Chunk by chunk: the float32 accumulator stays in the CPU cache across the K ingredients, which
            # is ~3x faster on 2 cores than whole tensors, and memory does not grow with the largest tensor.
            numel = math.prod(first[name].shape)
            for start in range(0, numel, CHUNK_ELEMENTS):
                stop = min(numel, start + CHUNK_ELEMENTS)
                if not first[name].is_float:  # integer buffers are not averaged: all ingredients share them
                    yield reader.read(first[name], start, stop)
                    continue
                chunks = (reader.read(index[name], start, stop) for index in indexes)  # one alive at a time
                yield weighted_average(chunks, weights, accumulator, scratch).to(out_dtype(name), copy=True)

        for shard, shard_name in zip(shards, shard_names, strict=True):
            write_streaming(out / shard_name, shard, produce)
        digests = reader.digests(sorted({e.file for index in indexes for e in index.values()}))
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


def mergekit_yaml(models: Sequence[Path], weights: Sequence[float], dtype: str) -> str:
    """The same merge as a mergekit `linear` config (normalize off: the weights are used as given)."""
    config = {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights, strict=True)],
        "parameters": {"normalize": False},
        "dtype": dtype,
    }
    return yaml.safe_dump(config, sort_keys=False)


def build_soup_from_config(config: SoupConfig) -> Path:
    return build_soup(
        config.models,
        config.output_dir,
        config.weights,
        alpha=config.alpha,
        allow_extrapolation=config.allow_extrapolation,
        dtype=config.dtype,
        max_shard_size=config.max_shard_size,
    )
