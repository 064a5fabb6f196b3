"""Errors that carry where the bad input is, so every message names the file, the row and the fix."""


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


class CheckpointError(MmtuneError):
    """A checkpoint folder is missing files or does not match the model it claims to hold."""
