"""Atomic file and directory writes, JSON/JSONL helpers, stage completion markers and file digests.

Every file salsa writes goes through here, so an interrupted run (even `kill -9`) never leaves a
half-written file in place: content goes to a temporary sibling first, then is renamed over the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from salsa.errors import DataError, naming

COMPLETE_MARKER = "salsa_complete.json"
# A reward model directory from `salsa reward`: its backbone, layout and normalisation.
REWARD_META = "salsa_reward.json"
# atomic_file / atomic_dir name their temporaries `.<name>.<8 random characters>.tmp`; atomic_dir's replaced
# directory was `.<name>.old-<pid>`.
TEMPORARY = re.compile(r"\..+\.(tmp|old-\d+)")
# A soup directory from `salsa soup`: its ingredients, their weights and the SHA-256 of their files.
SOUP_RECORD = "soup.json"
# The RL reward's mean and std (`salsa.rl.normalisation`): in an RL run's directory, or `salsa run`'s normalisation/.
NORMALISATION_FILE = "reward_normalisation.json"


def cache_dir() -> Path:
    """Where salsa caches converted models and file digests: $SALSA_CACHE, else ~/.cache/salsa."""
    return Path(os.environ.get("SALSA_CACHE", Path.home() / ".cache" / "salsa"))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def usual_permissions(path: str | os.PathLike) -> None:
    """Give a file or tree the permissions plain open/mkdir would (mkstemp, mkdtemp and safetensors make
    them owner-only), so that a run directory on a shared machine is readable as usual."""
    umask, path = _umask(), Path(path)
    for entry in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the block finishes. An OS refusal
    in the block that names no file (a failed write) names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with naming(path):
            yield Path(tmp)
            usual_permissions(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file salsa wrote; a damaged one is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt JSON ({e}); remove or regenerate it") from None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` only if the block finishes without error.

    An existing `target` is moved aside and deleted after the new one is in place, so at every instant
    either the old or the new complete directory sits at `target`. An OS refusal in the block that names no file
    (a failed write) names `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with naming(target):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    usual_permissions(tmp)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_debris(folder: Path, depth: int = 3) -> None:
    """Delete salsa's temporary files and directories (`.name.xxxxxxxx.tmp`) that an interrupted run left."""
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if TEMPORARY.fullmatch(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        elif depth > 1 and entry.is_dir() and not entry.is_symlink():
            remove_debris(entry, depth - 1)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSONL file salsa wrote; a damaged one is a one-line error naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: corrupt JSONL ({e}); remove or regenerate it") from None


def mark_complete(stage_dir: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
    """Write the completion marker: the last file a stage writes."""
    atomic_write_json(Path(stage_dir) / COMPLETE_MARKER, info or {})


def is_complete(stage_dir: str | os.PathLike) -> bool:
    return (Path(stage_dir) / COMPLETE_MARKER).is_file()


def is_soup_directory(model_dir: str | os.PathLike) -> bool:
    """A model directory that `salsa soup` wrote: it holds the soup's record of its ingredients."""
    record = Path(model_dir) / SOUP_RECORD
    if not record.is_file():
        return False
    recorded = read_json(record)
    return isinstance(recorded, dict) and "ingredients" in recorded


# ---------------------------------------------------------------- SHA-256 digests of model files


def hash_file(hasher, path: str | os.PathLike, start: int = 0, chunk: int = 1 << 24):
    """Feed the bytes of `path` from offset `start` to its end into `hasher` (a hashlib object); returns it."""
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            hasher.update(block)
    return hasher


def sha256_file(path: str | os.PathLike) -> str:
    return hash_file(hashlib.sha256(), path).hexdigest()


def digest_key(file: Path) -> str:
    """A digest stays valid while the file keeps its path, size and modification time."""
    stat = file.stat()
    return f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def load_digest_cache() -> dict[str, str]:
    path = cache_dir() / "sha256.json"
    try:
        return read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a rehash


def save_digest_cache(cache: dict[str, str]) -> None:
    """Write the cache back, without the entries of files that no longer exist."""
    kept = {key: digest for key, digest in cache.items() if Path(key.rsplit(":", 2)[0]).exists()}
    try:
        atomic_write_json(cache_dir() / "sha256.json", kept)
    except OSError:
        pass  # a read-only cache directory only costs a rehash next time


def record_digests(model_dir: str | os.PathLike) -> None:
    """Hash the weight files of a model salsa just wrote, so a later soup of it needs no second pass."""
    cache = load_digest_cache()
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        cache[digest_key(file)] = sha256_file(file)
    save_digest_cache(cache)
