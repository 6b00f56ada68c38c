"""Turning received shards into tensors, and checking them against the index.

Shared by both clients for ``state_dict`` (a shard in one buffer, tensors viewing it) and
``iter_tensors`` (a shard streamed, one tensor at a time), and by ``download``. No network
here. :class:`ShardChecker` verifies a shard while it arrives, so no byte is read twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._checksums import TensorVerifier
from ._exceptions import IntegrityError
from ._safetensors import (
    HeaderReader,
    SafetensorsError,
    SafetensorsHeader,
    SafetensorsStream,
    TensorEntry,
    parse_buffer_header,
    tensor_from_buffer,
)
from .types import ShardInfo, StateDictIndex

if TYPE_CHECKING:
    import torch

__all__ = ["check_index", "check_shard_header", "tensors_from_shard", "merge_shards", "ShardChecker", "StreamSink"]


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
    buffer: Any, shard: ShardInfo, index: StateDictIndex, verifier: TensorVerifier | None
) -> dict[str, torch.Tensor]:
    """Every tensor of a complete shard in ``buffer``, each a view of it (no copy).

    ``verifier`` checks each tensor's checksum here; pass ``None`` when a
    :class:`ShardChecker` already did while the bytes arrived.
    """
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
            if verifier is not None:
                with view[start : start + entry.nbytes] as part:
                    verifier.check(entry.name, part, where=where)
            tensors[entry.name] = tensor_from_buffer(buffer, entry, header.data_start)
    return tensors


def merge_shards(parts: list[dict[str, torch.Tensor]], order: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """One dict, ordered as ``order`` (the index's ``weight_map``: the model's own order)
    where it names every key, else in shard order. A key in two shards is an
    :class:`IntegrityError`."""
    merged: dict[str, torch.Tensor] = {}
    for number, part in enumerate(parts):
        for name, tensor in part.items():
            if name in merged:
                raise IntegrityError(f"tensor {name!r} appears in more than one shard (again in shard {number})")
            merged[name] = tensor
    if order is not None and len(order) == len(merged) and all(name in merged for name in order):
        return {name: merged[name] for name in order}
    return merged


class ShardChecker:
    """Checks one shard's bytes as they arrive: the header against the index, then each
    tensor's checksum the moment its last byte is in, hashing every chunk while it is still
    in cache instead of reading the finished shard (or file) a second time.

    Call order::

        checker = ShardChecker(shard, index, verifier)
        checker.feed(chunk) ...   # every byte of the file, in order, in chunks of any size
        checker.reset()           # only if the transfer starts over from byte 0
        checker.close()           # raises IntegrityError if the file ended early

    With an inactive verifier only the header and the sizes are checked.
    """

    def __init__(self, shard: ShardInfo, index: StateDictIndex, verifier: TensorVerifier) -> None:
        self.shard = shard
        self.index = index
        self.verifier = verifier
        self._where = f" in shard {shard.index} ({shard.filename})"
        self.reset()

    def reset(self) -> None:
        self.size = 0
        self._reader = HeaderReader()  # length prefix and header, until parsed
        self._header: SafetensorsHeader | None = None
        self._next = 0  # the tensor being received
        self._left = 0  # its bytes still to come
        self._hasher: Any = None

    def feed(self, data: memoryview) -> None:
        view = data if data.format == "B" and data.ndim == 1 else data.cast("B")
        self.size += len(view)
        if self._header is None:
            view = self._take_header(view)
            if self._header is None:
                return
        while len(view):
            if self._next >= len(self._header.entries):
                raise IntegrityError(
                    f"shard {self.shard.index} ({self.shard.filename}): {len(view)} bytes past the "
                    "end of the data its header describes"
                )
            take = min(len(view), self._left)
            if self._hasher is not None:
                self._hasher.update(view[:take])
            self._left -= take
            view = view[take:]
            if self._left == 0:
                self._finish_tensor()

    def close(self) -> None:
        if self._header is None or self._next < len(self._header.entries):
            raise IntegrityError(
                f"shard {self.shard.index} ({self.shard.filename}) ended after {self.size} bytes, "
                "inside the file"
            )

    def _take_header(self, view: memoryview) -> memoryview:
        try:
            view = self._reader.take(view)
        except SafetensorsError as exc:
            raise IntegrityError(
                f"shard {self.shard.index} ({self.shard.filename}) is not valid safetensors: {exc}"
            ) from None
        if self._reader.header is not None:
            check_shard_header(self._reader.header, self.shard, self.index)
            self._header = self._reader.header
            self._start_tensor()
        return view

    def _start_tensor(self) -> None:
        assert self._header is not None
        entries = self._header.entries
        while self._next < len(entries):
            self._left = entries[self._next].nbytes
            self._hasher = self.verifier.hasher()
            if self._left:
                return
            self._finish_tensor(start_next=False)  # an empty tensor is complete at once

    def _finish_tensor(self, start_next: bool = True) -> None:
        if self._hasher is not None and self._header is not None:
            self.verifier.check_digest(self._header.entries[self._next].name, self._hasher.hexdigest(), where=self._where)
        self._next += 1
        self._hasher = None
        if start_next:
            self._start_tensor()


class StreamSink:
    """A :class:`~._resume.Sink` that parses as bytes arrive and queues finished tensors.

    It cannot restart: once tensors were handed out, a shard that changed under a resumed
    stream is an :class:`IntegrityError`. ``verifier`` checks each finished tensor; pass
    ``None`` when the transfer's :class:`ShardChecker` verifies the bytes as they arrive.
    Read in place (``window``/``commit``), each tensor's bytes land in its own buffer.

    With ``destination`` (see :class:`~._safetensors.SafetensorsStream`) each tensor's bytes
    land in memory the caller owns (``state_dict(out=...)``): nothing is queued, and a
    shard the server sends again from byte 0 simply overwrites what it had written.
    """

    def __init__(
        self,
        shard: ShardInfo,
        index: StateDictIndex,
        verifier: TensorVerifier | None,
        destination: Callable[[TensorEntry], Any] | None = None,
    ) -> None:
        self.shard = shard
        self.index = index
        self.verifier = verifier
        self.size = 0
        self._destination = destination
        self._stream = SafetensorsStream(destination)
        self._ready: deque[tuple[TensorEntry, bytearray]] = deque()
        self._where = f" in shard {shard.index} ({shard.filename})"
        self._checked = False
        self._window: memoryview | None = None

    def write(self, data: memoryview) -> None:
        try:
            finished = self._stream.feed(data)
        except SafetensorsError as exc:
            raise IntegrityError(f"shard {self.shard.index} ({self.shard.filename}): {exc}") from None
        self._took(len(data), finished)

    def window(self, limit: int) -> memoryview:
        self._window = self._stream.window(limit)
        return self._window

    def commit(self, n: int) -> memoryview:
        assert self._window is not None, "commit follows window"
        data = self._window[:n]
        try:
            finished = self._stream.commit(n)
        except SafetensorsError as exc:
            raise IntegrityError(f"shard {self.shard.index} ({self.shard.filename}): {exc}") from None
        self._took(n, finished)
        return data

    def _took(self, n: int, finished: list[tuple[TensorEntry, bytearray]]) -> None:
        self.size += n
        if self._stream.header is not None and not self._checked:
            check_shard_header(self._stream.header, self.shard, self.index)
            self._checked = True
        for entry, payload in finished:
            if self.verifier is not None:
                self.verifier.check(entry.name, payload, where=self._where)
            if self._destination is None:
                self._ready.append((entry, payload))

    def reset(self) -> None:
        if self._destination is not None:  # nothing handed out: fill the same memory again
            self._stream = SafetensorsStream(self._destination)
            self.size = 0
            self._checked = False
            return
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
