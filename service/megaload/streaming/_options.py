"""The options a state-dict stream is planned with: shard size, target dtype, key filter."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._dtypes import safetensors_dtype_name
from ._errors import InvalidShardOptionsError
from ._key_filter import KeyFilter

__all__ = [
    "ShardOptions",
    "DEFAULT_MAX_SHARD_BYTES",
    "MIN_MAX_SHARD_BYTES",
    "MAX_MAX_SHARD_BYTES",
    "MAX_KEY_PATTERNS",
    "MAX_KEY_PATTERN_LENGTH",
]

_MiB = 1 << 20
_GiB = 1 << 30

DEFAULT_MAX_SHARD_BYTES = 512 * _MiB
MIN_MAX_SHARD_BYTES = 1 * _MiB
MAX_MAX_SHARD_BYTES = 64 * _GiB
MAX_KEY_PATTERNS = 64
MAX_KEY_PATTERN_LENGTH = 1024


@dataclass(frozen=True)
class ShardOptions:
    """What a plan selects and how it shards it. Validated on construction.

    ``max_shard_bytes``
        Bound on the tensor bytes of one shard (as Hugging Face's ``max_shard_size``: the
        header, a few KiB, comes on top). A tensor larger than the bound gets a shard of its
        own. Between ``MIN_MAX_SHARD_BYTES`` (1 MiB) and ``MAX_MAX_SHARD_BYTES`` (64 GiB).
    ``dtype``
        ``None`` keeps every tensor's dtype. A floating-point ``torch.dtype`` casts every
        floating-point tensor to it on the fly; integer, boolean and complex tensors keep
        theirs. Spellings such as ``"bf16"`` are the caller's to parse.
    ``keys``
        Regular expressions matched at the start of each name (``re.match``), so a plain
        prefix works, though ``.`` in it matches any character. A name is kept when any
        pattern matches; no patterns keep everything. At most ``MAX_KEY_PATTERNS`` patterns
        of at most ``MAX_KEY_PATTERN_LENGTH`` characters each. A single string is one pattern.
        Run by a linear-time engine (:mod:`._key_filter`): patterns that need backtracking
        (back-references, look-around) are refused with :class:`InvalidKeyPatternError`.
    """

    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    dtype: torch.dtype | None = None
    keys: tuple[str, ...] = ()
    _filter: KeyFilter | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_max_shard_bytes(self.max_shard_bytes)
        _check_dtype(self.dtype)
        keys = _normalize_keys(self.keys)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "_filter", KeyFilter(keys))

    def matches(self, name: str) -> bool:
        """Whether ``name`` passes the ``keys`` filter."""
        return self._filter is None or self._filter.matches(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, canonical: equal options give equal dicts (used in ETags)."""
        return {
            "max_shard_bytes": self.max_shard_bytes,
            "dtype": safetensors_dtype_name(self.dtype) if self.dtype is not None else None,
            "keys": list(self.keys),
        }


def _check_max_shard_bytes(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidShardOptionsError(
            f"max_shard_bytes must be an integer number of bytes, got {type(value).__name__}",
            field="max_shard_bytes",
            value=value,
        )
    if value < MIN_MAX_SHARD_BYTES:
        raise InvalidShardOptionsError(
            f"max_shard_bytes={value} is below the minimum of {MIN_MAX_SHARD_BYTES} bytes (1 MiB)",
            field="max_shard_bytes",
            value=value,
            limit=MIN_MAX_SHARD_BYTES,
        )
    if value > MAX_MAX_SHARD_BYTES:
        raise InvalidShardOptionsError(
            f"max_shard_bytes={value} is above the maximum of {MAX_MAX_SHARD_BYTES} bytes (64 GiB)",
            field="max_shard_bytes",
            value=value,
            limit=MAX_MAX_SHARD_BYTES,
        )


def _check_dtype(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, torch.dtype):
        raise InvalidShardOptionsError(
            f"dtype must be a torch.dtype or None, got {type(value).__name__}", field="dtype", value=value
        )
    if not value.is_floating_point or safetensors_dtype_name(value) is None:
        raise InvalidShardOptionsError(
            f"dtype {value} cannot be a cast target: it must be a floating-point dtype safetensors can hold",
            field="dtype",
            value=value,
        )


def _normalize_keys(keys: object) -> tuple[str, ...]:
    if keys is None:
        return ()
    if isinstance(keys, str):
        keys = (keys,)
    if not isinstance(keys, Iterable):
        raise InvalidShardOptionsError(
            f"keys must be a list of strings, got {type(keys).__name__}", field="keys", value=keys
        )
    out = tuple(keys)
    if len(out) > MAX_KEY_PATTERNS:
        raise InvalidShardOptionsError(
            f"too many keys patterns: {len(out)} given, at most {MAX_KEY_PATTERNS} allowed",
            field="keys",
            value=len(out),
            limit=MAX_KEY_PATTERNS,
        )
    for pattern in out:
        if not isinstance(pattern, str):
            raise InvalidShardOptionsError(
                f"keys patterns must be strings, got {type(pattern).__name__}", field="keys", value=pattern
            )
        if len(pattern) > MAX_KEY_PATTERN_LENGTH:
            raise InvalidShardOptionsError(
                f"keys pattern of {len(pattern)} characters is longer than the limit of "
                f"{MAX_KEY_PATTERN_LENGTH}",
                field="keys",
                value=pattern[:64] + "...",
                limit=MAX_KEY_PATTERN_LENGTH,
            )
    return out

