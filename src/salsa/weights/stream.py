"""Streaming safetensors I/O: read byte ranges of tensors, write a shard piece by piece.

safetensors' own loader memory-maps files, and mapped pages count towards a process's RSS; reading each
tensor with a plain `readinto` keeps resident memory at the size of the tensors in hand. The writer lays
out a shard's header first (names, dtypes, shapes and offsets are known up front), then appends each
tensor's bytes as it is produced, so no whole shard is ever held in memory.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
"""

from __future__ import annotations

import json
import math
import struct
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from salsa.errors import SoupError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Parse and check a safetensors header; every offset must lie inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise SoupError(f"{path}: file is missing") from None
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise SoupError(f"{path}: corrupt safetensors file ({e}); re-save or re-download it") from None
    metadata = header.pop("__metadata__", {}) or {}
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise SoupError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        expected = math.prod(info["shape"]) * DTYPES[info["dtype"]].itemsize
        if end - begin != expected or data_start + end > size:
            raise SoupError(f"{path}: corrupt safetensors file (tensor '{name}' is truncated or misplaced)")
        entries[name] = TensorEntry(path, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end)
    return entries, metadata


def read_range(handle, file: Path, begin: int, end: int) -> torch.Tensor:
    """Bytes [begin, end) of an open file as a fresh uint8 tensor (no memory map)."""
    buffer = torch.empty(end - begin, dtype=torch.uint8)
    handle.seek(begin)
    if end > begin and handle.readinto(buffer.numpy()) != end - begin:
        raise SoupError(f"{file}: file ended early; it is truncated")
    return buffer


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    """Read one tensor into fresh memory (no memory map)."""
    with open(entry.file, "rb") as handle:
        return read_range(handle, entry.file, entry.begin, entry.end).view(entry.torch_dtype).reshape(entry.shape)


class Backlog:
    """Futures of work on byte buffers, at most `max_bytes` of them outstanding: adding more waits for the
    oldest, so buffers handed to a worker thread cannot pile up in memory."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.futures: deque[tuple[Future, int]] = deque()

    def add(self, future: Future, nbytes: int) -> None:
        self.futures.append((future, nbytes))
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self._collect_oldest()

    def wait(self) -> None:
        while self.futures:
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        future, nbytes = self.futures.popleft()
        future.result()  # re-raises the worker's error here
        self.bytes -= nbytes


def write_streaming(
    path: Path,
    layout: list[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], Iterable[torch.Tensor]],
    metadata: dict[str, str] | None = None,
    max_pending_bytes: int = 64 << 20,
) -> None:
    """Write a safetensors file whose tensors are produced one at a time, in `layout` order.

    `produce(name)` yields the tensor in consecutive pieces (flattened, in order), or whole as one piece.
    Pieces are written by a worker thread while the next ones are produced (writing into the page cache
    costs as much CPU as the averaging), so a piece must not be modified after it is yielded; at most
    `max_pending_bytes` of them wait to be written.
    """
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    pending = Backlog(max_pending_bytes)
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as writer:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, dtype, shape in layout:
            written = 0
            for piece in produce(name):
                if piece.dtype != dtype:
                    raise RuntimeError(f"produced {name} as {piece.dtype}, expected {dtype}")
                data = piece.contiguous().reshape(-1).view(torch.uint8).numpy()
                pending.add(writer.submit(f.write, data), len(data))
                written += piece.numel()
            if written != math.prod(shape):
                raise RuntimeError(f"produced {written} elements of {name}, expected {math.prod(shape)} ({shape})")
        pending.wait()
