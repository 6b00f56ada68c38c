"""Turning received shards into tensors, and checking them against the index.

Shared by both clients for ``state_dict`` (a shard in one buffer, tensors viewing it) and
``iter_tensors`` (a shard streamed, one tensor at a time). No network here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._checksums import TensorVerifier
from ._exceptions import IntegrityError
from ._models import ShardInfo, StateDictIndex
from ._safetensors import (
    SafetensorsError,
    SafetensorsHeader,
    SafetensorsStream,
    TensorEntry,
    parse_buffer_header,
    tensor_from_buffer,
)

if TYPE_CHECKING:
    import torch

__all__ = ["check_index", "check_shard_header", "tensors_from_shard", "StreamSink"]


def check_index(index: StateDictIndex) -> None:
    """Refuse an index whose shards are not numbered 0..n-1 or whose files are unsafe names."""
    for position, shard in enumerate(index.shards):
        if shard.index != position:
            raise IntegrityError(f"index lists shard {shard.index} at position {position}")
        name = shard.filename
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            raise IntegrityError(f"index names shard {position} {name!r}, which is not a plain file name")
    filenames = {s.filename for s in index.shards}
    if len(filenames) != len(index.shards):
        raise IntegrityError("index gives two shards the same file name")
    strays = {f for f in index.weight_map.values() if f not in filenames}
    if strays:
        raise IntegrityError(f"weight_map points to files that are not shards: {sorted(strays)}")


def check_shard_header(header: SafetensorsHeader, shard: ShardInfo, index: StateDictIndex) -> None:
    """The shard holds exactly the tensors the index maps to its file."""
    where = f"shard {shard.index} ({shard.filename})"
    if header.file_size != shard.size:
        raise IntegrityError(f"{where}: header describes {header.file_size} bytes, index says {shard.size}")
    if len(header.entries) != shard.tensor_count:
        raise IntegrityError(
            f"{where}: holds {len(header.entries)} tensors, index says {shard.tensor_count}"
        )
    for entry in header.entries:
        if index.weight_map.get(entry.name) != shard.filename:
            raise IntegrityError(f"{where}: tensor {entry.name!r} is not mapped to this file by the index")
    if shard.names and sorted(shard.names) != sorted(entry.name for entry in header.entries):
        raise IntegrityError(f"{where}: holds other tensors than the index lists for it")


def tensors_from_shard(
    buffer: bytearray, shard: ShardInfo, index: StateDictIndex, verifier: TensorVerifier
) -> dict[str, torch.Tensor]:
    """Every tensor of a complete shard in ``buffer``, each a view of it (no copy)."""
    where = f" in shard {shard.index} ({shard.filename})"
    try:
        header = parse_buffer_header(buffer)
    except SafetensorsError as exc:
        raise IntegrityError(f"shard {shard.index} ({shard.filename}) is not valid safetensors: {exc}") from None
    check_shard_header(header, shard, index)
    tensors = {}
    with memoryview(buffer) as view:
        for entry in header.entries:
            start = header.data_start + entry.begin
            with view[start : start + entry.nbytes] as part:
                verifier.check(entry.name, part, where=where)
            tensors[entry.name] = tensor_from_buffer(buffer, entry, header.data_start)
    return tensors


class StreamSink:
    """A :class:`~._resume.Sink` that parses as bytes arrive and queues finished tensors.

    It cannot restart: once tensors were handed out, a shard that changed under a resumed
    stream is an :class:`IntegrityError`.
    """

    def __init__(self, shard: ShardInfo, index: StateDictIndex, verifier: TensorVerifier) -> None:
        self.shard = shard
        self.index = index
        self.verifier = verifier
        self.size = 0
        self._stream = SafetensorsStream()
        self._ready: deque[tuple[TensorEntry, bytearray]] = deque()
        self._where = f" in shard {shard.index} ({shard.filename})"
        self._checked = False

    def write(self, data: memoryview) -> None:
        try:
            finished = self._stream.feed(data)
        except SafetensorsError as exc:
            raise IntegrityError(f"shard {self.shard.index} ({self.shard.filename}): {exc}") from None
        self.size += len(data)
        if self._stream.header is not None and not self._checked:
            check_shard_header(self._stream.header, self.shard, self.index)
            self._checked = True
        for entry, payload in finished:
            self.verifier.check(entry.name, payload, where=self._where)
            self._ready.append((entry, payload))

    def reset(self) -> None:
        if self.size:
            raise IntegrityError(
                f"shard {self.shard.index} ({self.shard.filename}) changed on the server while it "
                "was being streamed; start again"
            )

    def close(self) -> None:
        try:
            self._stream.close()
        except SafetensorsError as exc:
            raise IntegrityError(f"shard {self.shard.index} ({self.shard.filename}): {exc}") from None

    def drain(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Hand out the tensors finished so far, oldest first, forgetting them."""
        while self._ready:
            entry, payload = self._ready.popleft()
            yield entry.name, tensor_from_buffer(payload, entry, -entry.begin)
