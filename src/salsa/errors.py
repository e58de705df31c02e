"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""

from __future__ import annotations

import errno
import re


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


def os_error_message(error: BaseException) -> str | None:
    """A one-line message for an OS refusal (also when a library wrapped it), or None for anything else."""
    code = getattr(error, "errno", None)
    if code not in OS_ERRORS:
        found = re.search(r"(?:os error|errno|code:?) ?(\d+)", str(error), re.IGNORECASE)
        code = int(found.group(1)) if found and int(found.group(1)) in OS_ERRORS else None
        if code is None and "No space left on device" in str(error):
            code = errno.ENOSPC
    if code is None:
        return None
    path = getattr(error, "filename", None)
    return f"{path}: {OS_ERRORS[code]}" if path else f"could not write: {OS_ERRORS[code]}"
