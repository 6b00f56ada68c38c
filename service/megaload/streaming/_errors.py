"""Errors raised by the streaming library.

Every error names what was wrong (the option, the pattern, the limit, the shard, the range).
The HTTP layer maps each class to one problem type; the suggested status is given below.

    StreamingError
    ├── InvalidShardOptionsError   (also ValueError)   400/422  an option out of bounds or of the wrong type
    │   └── InvalidKeyPatternError                      400      a ``keys`` regular expression refused (invalid, or not linear)
    ├── KeysNotFoundError          (also LookupError)   404      a ``keys`` filter that matches no name of the state dict
    ├── ShardNotFoundError         (also LookupError)   404      no shard with that index in the plan
    ├── RangeNotSatisfiableError                        416      a byte range outside the shard file
    └── PlanMismatchError          (also RuntimeError)  500      the tensors streamed differ from the planned ones

``PlanMismatchError`` is not caused by the request: it means the tensors handed to the byte
source are not those the plan was made from (a model replaced under a cached plan).
"""

from __future__ import annotations

__all__ = [
    "StreamingError",
    "InvalidShardOptionsError",
    "InvalidKeyPatternError",
    "KeysNotFoundError",
    "ShardNotFoundError",
    "RangeNotSatisfiableError",
    "PlanMismatchError",
]


class StreamingError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidShardOptionsError(StreamingError, ValueError):
    """An option outside its bounds. ``field`` names the option, ``value`` is what was given,
    ``limit`` the bound it broke (when there is one)."""

    def __init__(self, message: str, *, field: str, value: object = None, limit: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.limit = limit


class InvalidKeyPatternError(InvalidShardOptionsError):
    """A ``keys`` pattern that is not a valid regular expression, or one the linear-time
    engine refuses (back-references, look-around, too large a program); ``field`` is ``"keys"``."""

    def __init__(self, message: str, *, pattern: str, position: int | None = None) -> None:
        super().__init__(message, field="keys", value=pattern)
        self.pattern = pattern
        self.position = position


class KeysNotFoundError(StreamingError, LookupError):
    """A ``keys`` filter that matches none of the names planned: almost always a misspelt
    prefix. ``patterns`` is the filter, ``key_prefixes`` the distinct first two dotted
    components of the names there are (the spellings that would match); ``field`` is ``"keys"``."""

    def __init__(self, message: str, *, patterns: tuple[str, ...], key_prefixes: list[str]) -> None:
        super().__init__(message)
        self.field = "keys"
        self.patterns = patterns
        self.key_prefixes = key_prefixes


class ShardNotFoundError(StreamingError, LookupError):
    """``index`` is not between 0 and ``shard_count - 1``."""

    def __init__(self, message: str, *, index: object, shard_count: int) -> None:
        super().__init__(message)
        self.index = index
        self.shard_count = shard_count


class RangeNotSatisfiableError(StreamingError):
    """A byte range that does not overlap the shard file. ``size`` is the file size, for the
    ``Content-Range: bytes */size`` header of a 416 answer."""

    def __init__(self, message: str, *, range_header: str | None, size: int) -> None:
        super().__init__(message)
        self.range_header = range_header
        self.size = size


class PlanMismatchError(StreamingError, RuntimeError):
    """A planned tensor is missing from the mapping streamed, or its shape, dtype or layout
    changed since the plan was made. ``name`` is the tensor concerned."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name
