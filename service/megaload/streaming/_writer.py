"""The shard writer: where the bytes of a planned shard come from.

:func:`iter_shard_bytes` produces the bytes ``[start, end)`` of one shard file: the header
held in the plan, then each tensor's wire bytes in the shard's data order, read from the
tensor's own memory (see :mod:`._tensor_bytes`). Nothing is serialized as a whole: a piece is
at most ``chunk_bytes``, and pieces smaller than 64 KiB (the header, small tensors, range
edges) are gathered into one piece of at most ``chunk_bytes``, so a shard of many small
tensors does not become many tiny writes.

Everything that can fail because of its arguments fails when :func:`iter_shard_bytes` is
called, before the first byte: a shard that does not exist, a range outside the file, a
planned tensor missing or changed. Once iteration starts, only the system can fail (memory,
a device error).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from ._errors import InvalidShardOptionsError, PlanMismatchError, RangeNotSatisfiableError
from ._lazy import LazyTensors, check_spec
from ._plan import ShardPlan, TensorEntry
from ._tensor_bytes import DeviceStaging, tensor_pieces

__all__ = [
    "iter_shard_bytes",
    "resolve_tensor",
    "resolve_rows",
    "DEFAULT_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
]

_KiB, _MiB = 1 << 10, 1 << 20
DEFAULT_CHUNK_BYTES = 4 * _MiB
MIN_CHUNK_BYTES = 16
MAX_CHUNK_BYTES = 256 * _MiB
_GATHER_BELOW = 64 * _KiB


def iter_shard_bytes(
    plan: ShardPlan,
    shard_index: int,
    tensors: Mapping[str, Any],
    *,
    start: int = 0,
    end: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[memoryview]:
    """Bytes ``[start, end)`` of shard ``shard_index`` of ``plan`` (``end=None``: to the end
    of the file), as ``memoryview`` pieces of at most ``chunk_bytes``.

    ``tensors`` is the mapping the plan was made from, or any mapping holding the same
    tensors by name (only the shard's names are read). A :class:`LazyTensors` is checked
    against the plan now and each tensor fetched when the stream reaches it. Each piece is read-only and stays
    valid after the next is produced. The iterator holds references to the shard's tensors
    until it is exhausted or closed: ``.close()`` it when the client goes away, then release
    the model's lease.

    Raises, before returning: :class:`ShardNotFoundError`, :class:`RangeNotSatisfiableError`
    (``start``/``end`` outside ``0 <= start <= end <= size``), :class:`InvalidShardOptionsError`
    (``chunk_bytes`` outside ``[MIN_CHUNK_BYTES, MAX_CHUNK_BYTES]``) and
    :class:`PlanMismatchError` (a tensor missing, or not of the planned shape and dtype).
    """
    shard = plan.shard(shard_index)
    if end is None:
        end = shard.size
    _check_range(start, end, shard.size)
    _check_chunk_bytes(chunk_bytes)
    if isinstance(tensors, LazyTensors):
        entries = [plan.tensors[name] for name in shard.layout]
        for entry in entries:
            check_spec(entry, tensors)
        return _shard_pieces(shard.header, _fetched(entries, tensors, start, end), start, end, chunk_bytes)
    sources = [(plan.tensors[name], resolve_tensor(plan.tensors[name], tensors)) for name in shard.layout]
    return _shard_pieces(shard.header, sources, start, end, chunk_bytes)


def _fetched(
    entries: list[TensorEntry], tensors: LazyTensors, start: int, end: int
) -> Iterator[tuple[TensorEntry, Any]]:
    """(entry, tensor) of a lazy mapping, fetched when reached; entries outside ``[start,
    end)`` are passed with no tensor (the writer skips them unread)."""
    for entry in entries:
        lo, hi = entry.file_offset, entry.file_offset + entry.nbytes
        if hi <= start or lo >= end or entry.nbytes == 0:
            yield entry, None
            continue
        yield entry, resolve_rows(entry, tensors.fetch_rows(entry.name))


def resolve_tensor(entry: TensorEntry, tensors: Mapping[str, Any]) -> torch.Tensor:
    """The tensor ``entry`` was planned from, detached; :class:`PlanMismatchError` when it is
    missing or no longer matches the plan."""
    try:
        value = tensors[entry.name]
    except KeyError:
        raise PlanMismatchError(f"planned tensor {entry.name!r} is not in the mapping", name=entry.name) from None
    if not isinstance(value, torch.Tensor):
        raise PlanMismatchError(
            f"planned tensor {entry.name!r} is now a {type(value).__name__}, not a tensor", name=entry.name
        )
    if tuple(value.shape) != entry.shape or value.dtype != entry.source_dtype:
        raise PlanMismatchError(
            f"tensor {entry.name!r} is {value.dtype} {list(value.shape)}, "
            f"planned as {entry.source_dtype} {list(entry.shape)}",
            name=entry.name,
        )
    return _with_data(entry, value)


def resolve_rows(entry: TensorEntry, value: Any) -> torch.Tensor:
    """What :meth:`LazyTensors.fetch_rows` gave for ``entry``, detached: a tensor of the planned
    dtype and number of elements (any shape: its row-major elements are streamed);
    :class:`PlanMismatchError` otherwise."""
    if not isinstance(value, torch.Tensor):
        raise PlanMismatchError(
            f"planned tensor {entry.name!r} was fetched as a {type(value).__name__}, not a tensor", name=entry.name
        )
    if value.numel() != math.prod(entry.shape) or value.dtype != entry.source_dtype:
        raise PlanMismatchError(
            f"tensor {entry.name!r} was fetched as {value.dtype} {list(value.shape)}, "
            f"planned as {entry.source_dtype} {list(entry.shape)}",
            name=entry.name,
        )
    return _with_data(entry, value)


def _with_data(entry: TensorEntry, value: torch.Tensor) -> torch.Tensor:
    """``value`` detached, once it is a strided tensor with data (not on the meta device)."""
    if value.layout != torch.strided:
        raise PlanMismatchError(f"tensor {entry.name!r} has layout {value.layout}", name=entry.name)
    if value.device.type == "meta":
        raise PlanMismatchError(f"tensor {entry.name!r} is a meta tensor: it has no data", name=entry.name)
    return value.detach()


def _check_range(start: object, end: object, size: int) -> None:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
    if not ints or not 0 <= start <= end <= size:  # type: ignore[operator]
        raise RangeNotSatisfiableError(
            f"byte range start={start!r} end={end!r} is not within the shard file of {size} bytes",
            range_header=None,
            size=size,
        )


def _check_chunk_bytes(chunk_bytes: object) -> None:
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int):
        raise InvalidShardOptionsError("chunk_bytes must be an integer", field="chunk_bytes", value=chunk_bytes)
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        limit = MIN_CHUNK_BYTES if chunk_bytes < MIN_CHUNK_BYTES else MAX_CHUNK_BYTES
        raise InvalidShardOptionsError(
            f"chunk_bytes={chunk_bytes} is outside [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}]",
            field="chunk_bytes",
            value=chunk_bytes,
            limit=limit,
        )


def _shard_pieces(
    header: bytes,
    sources: Iterable[tuple[TensorEntry, torch.Tensor]],
    start: int,
    end: int,
    chunk_bytes: int,
) -> Iterator[memoryview]:
    gather = _Gatherer(chunk_bytes)
    header_view = memoryview(header)
    for s in range(start, min(end, len(header)), chunk_bytes):
        yield from gather.add(header_view[s : min(s + chunk_bytes, end, len(header))])
    staging: DeviceStaging | None = None
    for entry, tensor in sources:
        lo, hi = entry.file_offset, entry.file_offset + entry.nbytes
        if hi <= start or lo >= end or entry.nbytes == 0:
            continue
        if staging is None and tensor.device.type != "cpu":
            staging = DeviceStaging(chunk_bytes)
        a, b = max(start, lo) - lo, min(end, hi) - lo
        for piece in tensor_pieces(tensor, entry.dtype, a, b, chunk_bytes, staging):
            yield from gather.add(piece)
    yield from gather.flush()


class _Gatherer:
    """Passes large pieces through and copies small ones into a fresh buffer per output piece."""

    def __init__(self, chunk_bytes: int) -> None:
        self.limit = chunk_bytes
        self.small = min(_GATHER_BELOW, chunk_bytes)
        self.buffer: bytearray | None = None

    def add(self, piece: memoryview) -> Iterator[memoryview]:
        size = len(piece)
        if size >= self.small:
            yield from self.flush()
            yield piece
            return
        if self.buffer is not None and len(self.buffer) + size > self.limit:
            yield from self.flush()
        if self.buffer is None:
            self.buffer = bytearray()
        self.buffer += piece

    def flush(self) -> Iterator[memoryview]:
        if self.buffer:
            out, self.buffer = self.buffer, None
            yield memoryview(out).toreadonly()
