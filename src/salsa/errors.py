"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class SalsaError(Exception):
    """A mistake in user input (config, data, paths). The message says what is wrong and what to do."""


class ConfigError(SalsaError):
    pass


class DataError(SalsaError):
    pass


class SoupError(SalsaError):
    pass


OS_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another output directory",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another output directory",
    errno.EACCES: "permission denied; choose a directory you can write to",
    errno.EPERM: "operation not permitted; choose a directory you can write to",
    errno.EROFS: "read-only file system; choose another output directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "is a directory, where a file was expected",
    errno.EEXIST: "already exists",
}


def os_error_code(error: BaseException) -> int | None:
    """The errno of an OS refusal salsa explains (also when a library wrapped it in its own error), or None."""
    code = getattr(error, "errno", None)
    if code in OS_ERRORS:
        return code
    found = re.search(r"(?:os error|errno|code:?) ?(\d+)", str(error), re.IGNORECASE)
    if found and int(found.group(1)) in OS_ERRORS:
        return int(found.group(1))
    return errno.ENOSPC if "No space left on device" in str(error) else None


def os_error_message(error: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """A one-line message for an OS refusal naming its path, or None for anything else. `where` (the directory
    being written) stands in for the path when the error names none."""
    code = os_error_code(error)
    if code is None:
        return None
    path = getattr(error, "filename", None)
    if code in (errno.ENOSPC, errno.EDQUOT) and getattr(error, "filename2", None):
        path = error.filename2  # a copy or a rename ran out of space where it writes, not where it reads
    if path:
        return f"{path}: {OS_ERRORS[code]}"
    return f"could not write in {where}: {OS_ERRORS[code]}" if where else f"could not write: {OS_ERRORS[code]}"


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OS refusal of the block that names no path (a failed write: `write()` knows no file name, nor
    do safetensors' and other libraries' wrapped I/O errors) as an OSError naming `path`."""
    try:
        yield
    except Exception as e:
        code = os_error_code(e)
        if code is None or getattr(e, "filename", None):
            raise
        raise OSError(code, os.strerror(code), str(path)) from e
