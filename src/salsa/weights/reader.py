"""Reading soup ingredients: the tensor index of a model directory, and a reader that hashes what it reads.

Every ingredient's SHA-256 comes from the same bytes the averaging reads, on worker threads, so a soup costs
one pass over its inputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch

from salsa.errors import SoupError
from salsa.io import digest_key, hash_file, load_digest_cache, read_json, save_digest_cache
from salsa.weights.stream import Backlog, TensorEntry, read_header, read_range

INDEX_FILE = "model.safetensors.index.json"
# How far ahead of the averaging each ingredient file is fetched from disk.
READ_AHEAD_BYTES = 64 << 20


def tensor_index(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a model directory (single file or sharded), from the safetensors headers."""
    if not model_dir.is_dir():
        raise SoupError(f"{model_dir}: model directory does not exist")
    index_file = model_dir / INDEX_FILE
    if index_file.is_file():
        try:
            weight_map = read_json(index_file)["weight_map"]
        except (KeyError, TypeError):
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


class HashingReader:
    """Reads byte ranges of ingredient files and computes each file's SHA-256 from the same bytes, in one pass.

    Hashing runs on worker threads (hashlib releases the GIL), one file per thread at a time, overlapping the
    averaging (SHA-256 runs at ~1.5 GB/s on one core here, slower than reading from the page cache); at most
    `max_pending_bytes` of read buffers wait for it. Bytes the averaging skips (a tied tensor, the header) are
    read for the hash when the reader passes them; a file read out of order is hashed again at the end.
    Digests are cached by (path, size, mtime): a second soup of the same ingredients, or of models salsa
    wrote itself (it records their digests when it saves them), does not hash. Once `digests` has given a file's
    digest, later reads of it (a second pass over the ingredients) do not hash it again.
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
            del self.hashers[file]
            self.position.pop(file, None)  # read again later: nothing more to hash
        save_digest_cache(self.cached)
        return result
