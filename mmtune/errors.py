"""Errors that carry where the bad input is, so every message names the file, the row and the fix."""

import errno
import os


class MmtuneError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class MediaError(MmtuneError):
    """An audio or image file cannot be used: missing, corrupt, empty, NaN, too large, bad mode."""


class DataError(MmtuneError):
    """A manifest row is bad. `source` is "manifest.jsonl:LINE"; `reason` says what is wrong."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}" if source else reason)


class ConfigError(MmtuneError, ValueError):
    """A config key is unknown or its value is bad; the message names the key and the fix."""


class CheckpointError(MmtuneError):
    """A checkpoint folder is missing files or does not match the model it claims to hold."""


def unreadable(path, error: OSError, kind: str) -> str:
    """Why an existing path cannot be opened as `kind` ("an audio file"), and the fix, in words."""
    if os.path.isdir(path):
        return f"is a folder, not {kind} (name a file inside it)"
    if error.errno == errno.ELOOP:
        return "is a symlink loop (the link leads back to itself); point it at the real file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied; fix its permissions (or its folder's), e.g. chmod a+r"
    return f"cannot be read: {error.strerror}; check the disk or mount it is on"
