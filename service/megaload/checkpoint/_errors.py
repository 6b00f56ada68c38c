"""Errors raised by the checkpoint library.

Every error names the path (and, where it applies, the field or limit) that was wrong.
The HTTP layer maps each class to one problem type; nothing else is raised for bad input.
Messages are bounded (:data:`MAX_MESSAGE_CHARS`); a value from a checkpoint appears in them
as :func:`summarize` shows it, never whole.

    CheckpointError
    ├── CheckpointNotFoundError      (also FileNotFoundError)  nothing at that path
    ├── NotACheckpointError          a directory, but no checkpoint in it
    ├── UnsupportedCheckpointError   a checkpoint we recognise but cannot honour
    │   └── UnmappableModelError     a model with no Hugging Face form (``field`` says why)
    ├── CorruptCheckpointError       files present but unreadable or inconsistent
    │   └── UnsafeCheckpointError    a pickle asks for something outside the allowlist
    ├── IncompatibleConfigError      (also ValueError) config fields that cannot be built/applied
    ├── InvalidDtypeError            (also ValueError) a dtype spelling we do not know
    ├── TokenizerError               no tokenizer can be built from the checkpoint
    ├── CheckpointExistsError        (also FileExistsError) refusing to overwrite a checkpoint
    ├── OutsideRootsError            (also PermissionError) a file resolves outside the allowed roots
    └── DistributedContextError      (also RuntimeError) torch.distributed in the wrong state
"""

from __future__ import annotations

import os
import reprlib

__all__ = [  # alphabetical
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "DistributedContextError",
    "IncompatibleConfigError",
    "InvalidDtypeError",
    "NotACheckpointError",
    "OutsideRootsError",
    "TokenizerError",
    "UnmappableModelError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
]

MAX_SUMMARY_CHARS = 200
MAX_MESSAGE_CHARS = 4096


class _Summary(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(x)
        return repr(x[: self.maxstring - 20]) + f"...({len(x)} chars)"


_SUMMARY = _Summary()


def summarize(value: object, limit: int = MAX_SUMMARY_CHARS) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, at a cost bounded however large or
    deeply nested (or shared, as YAML aliases make it) the value is."""
    try:
        text = _SUMMARY.repr(value)
    except Exception:  # a foreign object's __repr__ may raise anything
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_MESSAGE_CHARS + 40
    return message[: MAX_MESSAGE_CHARS - 40] + f"... ({cut} more characters)"


class CheckpointError(Exception):
    """Base class. ``path`` is the file or directory concerned, when there is one."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        return self.message


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist."""


class NotACheckpointError(CheckpointError):
    """The path exists but holds no Megatron distributed checkpoint."""


class UnsupportedCheckpointError(CheckpointError):
    """A checkpoint format, model type or feature this library does not support."""


class UnmappableModelError(UnsupportedCheckpointError):
    """The model cannot be expressed as a Hugging Face model of a supported architecture.

    ``field`` names the config field (``normalization``, ``position_embedding_type``...) or the
    Megatron tensor name that has no Hugging Face counterpart; ``architecture`` the target
    architecture when one was chosen (``None`` when none could be).
    """

    def __init__(
        self, message: str, *, field: str, architecture: str | None = None, path: str | os.PathLike | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.field = field
        self.architecture = architecture


class CorruptCheckpointError(CheckpointError):
    """Checkpoint files are truncated, unparsable or inconsistent with each other."""


class UnsafeCheckpointError(CorruptCheckpointError):
    """A pickle inside the checkpoint references a global outside the allowlist."""


class IncompatibleConfigError(CheckpointError, ValueError):
    """Config values that cannot be honoured (or overrides that do not apply)."""

    def __init__(self, message: str, *, path=None, field: str | None = None) -> None:
        super().__init__(message, path=path)
        self.field = field


class InvalidDtypeError(CheckpointError, ValueError):
    """A dtype string that no known spelling matches."""

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class TokenizerError(CheckpointError):
    """The checkpoint's tokenizer cannot be built (missing files, unknown type...)."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """The destination already holds a checkpoint and overwriting was not asked for."""


class DistributedContextError(CheckpointError, RuntimeError):
    """torch.distributed is (or is not) initialized when the call needs the opposite."""


class OutsideRootsError(CheckpointError, PermissionError):
    """A file the checkpoint names (or a symlink in it) resolves outside the directories the
    caller confined reading to (see :func:`megaload.checkpoint.confined_to`)."""
