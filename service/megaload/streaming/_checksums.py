"""Per-tensor checksums of the bytes as they go on the wire (after any dtype cast).

The algorithm is xxHash XXH3 64-bit (seed 0), as 16 lowercase hex digits
(:data:`CHECKSUM_ALGORITHM`). Computing checksums reads every tensor once, through the same
code that streams it, so a client hashing what it received gets the same value. Planning
does not compute them: call :func:`fill_checksums` and cache the result per (model, options).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xxhash

from ._lazy import LazyTensors, check_spec
from ._plan import ShardPlan
from ._tensor_bytes import DeviceStaging, tensor_pieces
from ._writer import DEFAULT_CHUNK_BYTES, _check_chunk_bytes, resolve_rows, resolve_tensor

__all__ = ["compute_checksums", "fill_checksums"]


def compute_checksums(
    plan: ShardPlan, tensors: Mapping[str, Any], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> dict[str, str]:
    """Name -> xxh3_64 hex of each planned tensor's wire bytes, in plan order.

    Raises :class:`PlanMismatchError` (before hashing anything) when a planned tensor is
    missing or changed.
    """
    _check_chunk_bytes(chunk_bytes)
    if isinstance(tensors, LazyTensors):
        for entry in plan.tensors.values():
            check_spec(entry, tensors)
        sources: Any = (
            (entry, resolve_rows(entry, tensors.fetch_rows(entry.name))) for entry in plan.tensors.values()
        )
    else:
        sources = [(entry, resolve_tensor(entry, tensors)) for entry in plan.tensors.values()]
    staging = DeviceStaging(chunk_bytes)
    out: dict[str, str] = {}
    for entry, tensor in sources:
        digest = xxhash.xxh3_64()
        for piece in tensor_pieces(tensor, entry.dtype, 0, entry.nbytes, chunk_bytes, staging):
            digest.update(piece)
        out[entry.name] = digest.hexdigest()
    return out


def fill_checksums(
    plan: ShardPlan, tensors: Mapping[str, Any], *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> ShardPlan:
    """A copy of ``plan`` with every entry's ``checksum`` set (``plan.checksums`` then answers)."""
    return plan.with_checksums(compute_checksums(plan, tensors, chunk_bytes=chunk_bytes))
