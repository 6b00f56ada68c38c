"""Resumable transfer of one shard: which ``Range`` to ask for, and what an answer means.

No network here; the clients drive it. Call order for one shard::

    transfer = ShardTransfer(sink, expected_size=index_size, checker=None)
    while not done:                               # one iteration per HTTP attempt
        headers = transfer.request_headers()      # Range + If-Range once bytes are held
        ... send GET with headers ...
        transfer.begin(status, response_headers)  # 200: (re)start at 0, 206: continue
        for chunk in body: transfer.write(chunk)  # httpx: chunks it already holds
        # or: while transfer.receive(body.readinto): ...   # read straight into the sink
    transfer.finish()                             # size check, then checker.close()

The sink is where bytes go: a preallocated buffer (``state_dict``), an ``.incomplete``
file (``download``) or a streaming parser (``iter_tensors``, which cannot restart). A
server that answers 200 to a range request is sending the whole file again (its ETag no
longer matches ``If-Range``, or it ignores ranges): the sink is reset and filled from 0.

Sinks take bytes two ways: ``write(data)`` copies bytes someone else received, and
``window(limit)`` / ``commit(n)`` let a reader ``readinto`` the sink's own memory (the shard
buffer itself; for files, one bounded buffer reused). An optional checker (a
:class:`~._shards.ShardChecker`) sees every byte once, in order, right after it lands.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO, Protocol

from ._exceptions import IntegrityError
from ._memory import fresh_buffer
from ._writeback import Writeback

__all__ = [
    "READ_CHUNK",
    "Sink",
    "Checker",
    "BufferSink",
    "FileSink",
    "ShardTransfer",
    "TransferAborted",
    "parse_content_range",
    "is_strong_etag",
]

# Bytes read per readinto: small enough that a chunk is still in cache when it is hashed.
READ_CHUNK = 1 << 20

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``"bytes 10-19/100"`` -> ``(10, 19, 100)``; ``None`` when absent or malformed."""
    if not value:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def is_strong_etag(etag: str | None) -> bool:
    """``If-Range`` needs a strong validator (RFC 9110 13.1.5); weak ones start with ``W/``."""
    return etag is not None and not etag.startswith("W/") and etag.startswith('"') and etag.endswith('"')


class TransferAborted(Exception):
    """Another shard of the same call failed: stop this one quietly."""


class Sink(Protocol):
    """Where the bytes of one shard go. ``size`` is how many are held.

    ``window(limit)`` is writable memory for the next at most ``limit`` bytes (never empty
    while ``limit`` > 0); after reading ``n`` bytes into it, ``commit(n)`` takes them and
    returns them as a view (valid until the next ``window``).
    """

    size: int

    def write(self, data: memoryview) -> None: ...
    def reset(self) -> None: ...
    def window(self, limit: int) -> memoryview: ...
    def commit(self, n: int) -> memoryview: ...


class Checker(Protocol):
    """Sees every byte of the shard once, in order (see :class:`~._shards.ShardChecker`)."""

    def feed(self, data: memoryview) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class BufferSink:
    """A preallocated buffer of the shard's exact size, filled in place.

    ``buffer`` defaults to fresh memory (:func:`~._memory.fresh_buffer`); any writable
    buffer of ``capacity`` bytes works.
    """

    def __init__(self, capacity: int, buffer: bytearray | mmap.mmap | None = None) -> None:
        self.buffer = fresh_buffer(capacity) if buffer is None else buffer
        self._view = memoryview(self.buffer)
        if len(self._view) != capacity:
            raise ValueError(f"buffer holds {len(self._view)} bytes, expected {capacity}")
        self.size = 0

    def write(self, data: memoryview) -> None:
        end = self.size + len(data)
        if end > len(self.buffer):
            raise IntegrityError(f"received more than the {len(self.buffer)} bytes announced")
        self._view[self.size : end] = data
        self.size = end

    def window(self, limit: int) -> memoryview:
        return self._view[self.size : self.size + limit]

    def commit(self, n: int) -> memoryview:
        data = self._view[self.size : self.size + n]
        self.size += n
        return data

    def reset(self) -> None:
        self.size = 0

    def release(self) -> None:
        self._view.release()


class FileSink:
    """Appends to a file, resuming after whatever it already holds; its bytes are on their
    way to disk while more arrive (:class:`~._writeback.Writeback`), and ``close`` fsyncs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self.size = self._file.seek(0, os.SEEK_END)
        self._scratch: memoryview | None = None
        self._writeback = Writeback(self._file.fileno(), start=self.size)

    def write(self, data: memoryview) -> None:
        self._file.write(data)
        self.size += len(data)
        self._writeback.written(self.size)

    def window(self, limit: int) -> memoryview:
        if self._scratch is None:
            self._scratch = memoryview(bytearray(READ_CHUNK))
        return self._scratch[: min(limit, READ_CHUNK)]

    def commit(self, n: int) -> memoryview:
        assert self._scratch is not None, "commit follows window"
        data = self._scratch[:n]
        self.write(data)
        return data

    def replay(self, feed: Callable[[memoryview], None]) -> None:
        """Hand the bytes already in the file (a resumed download) to ``feed``, in order."""
        self._file.flush()
        chunk = memoryview(bytearray(READ_CHUNK))
        with open(self.path, "rb", buffering=0) as f:
            left = self.size
            while left:
                n = f.readinto(chunk[: min(left, READ_CHUNK)])
                if not n:
                    raise IntegrityError(f"{self.path} shrank while being read back")
                feed(chunk[:n])
                left -= n

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate(0)
        self.size = 0
        self._writeback.reset()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class ShardTransfer:
    """Bookkeeping for one shard received over one or more responses.

    ``expected_size`` is the size the index announced (whole file, header included);
    ``etag`` the validator to resume against (taken from the first response if not given).
    ``on_restart`` is called when a 200 makes held bytes worthless (progress bars rewind).
    ``checker`` sees every byte as it lands, is reset with the sink, and closed by ``finish``.
    """

    def __init__(
        self,
        sink: Sink,
        expected_size: int | None,
        *,
        etag: str | None = None,
        on_restart: Callable[[int], None] | None = None,
        where: str = "shard",
        checker: Checker | None = None,
    ) -> None:
        self.sink = sink
        self.checker = checker
        self.expected_size = expected_size
        self.etag = etag
        self.where = where
        self._on_restart = on_restart
        self.restarts = 0

    @property
    def offset(self) -> int:
        return self.sink.size

    @property
    def complete(self) -> bool:
        return self.expected_size is not None and self.sink.size == self.expected_size

    def request_headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.offset > 0:
            headers["Range"] = f"bytes={self.offset}-"
            if self.etag is not None and is_strong_etag(self.etag):
                headers["If-Range"] = self.etag
        return headers

    def begin(self, status: int, headers: Mapping[str, str]) -> None:
        """Check an answer's status and headers before its body is read."""
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise IntegrityError(f"{self.where}: unexpected Content-Encoding {encoding!r}")
        etag = headers.get("etag")
        if status == 200:
            length = _int_header(headers, "content-length")
            self._check_total(length)
            if self.offset:
                held = self.offset
                self.sink.reset()
                if self.checker is not None:
                    self.checker.reset()
                self.restarts += 1
                if self._on_restart is not None:
                    self._on_restart(held)
            if self.expected_size is None:
                self.expected_size = length
            self.etag = etag or self.etag
            return
        if status != 206:
            raise IntegrityError(f"{self.where}: unexpected status {status} for a shard")
        parsed = parse_content_range(headers.get("content-range"))
        if parsed is None:
            raise IntegrityError(
                f"{self.where}: 206 with an invalid Content-Range {headers.get('content-range')!r}"
            )
        first, last, total = parsed
        if first != self.offset:
            raise IntegrityError(f"{self.where}: asked for bytes from {self.offset}, got from {first}")
        self._check_total(total)
        if total is not None and last != total - 1:
            raise IntegrityError(f"{self.where}: asked for bytes to the end ({total}), got to {last + 1}")
        if self.etag and etag and etag != self.etag:
            raise IntegrityError(f"{self.where}: ETag changed from {self.etag} to {etag} on resume")
        if self.expected_size is None:
            self.expected_size = total

    def write(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        if self.expected_size is not None and self.offset + len(view) > self.expected_size:
            raise IntegrityError(f"{self.where}: received more than the {self.expected_size} bytes announced")
        self.sink.write(view)
        if self.checker is not None:
            self.checker.feed(view)

    def receive(self, readinto: Callable[[memoryview], int], limit: int = READ_CHUNK) -> int:
        """Read the next bytes with ``readinto`` straight into the sink; returns how many.

        Never asks for more than the shard has left; 0 means the reader had nothing more.
        """
        if self.expected_size is not None:
            limit = min(limit, self.expected_size - self.offset)
        if limit <= 0:
            return 0
        n = readinto(self.sink.window(limit))
        if n:
            data = self.sink.commit(n)
            if self.checker is not None:
                self.checker.feed(data)
        return n

    def finish(self) -> None:
        if self.expected_size is None or self.offset != self.expected_size:
            raise IntegrityError(
                f"{self.where}: received {self.offset} bytes, expected {self.expected_size}"
            )
        if self.checker is not None:
            self.checker.close()

    def _check_total(self, total: int | None) -> None:
        if total is not None and self.expected_size is not None and total != self.expected_size:
            raise IntegrityError(
                f"{self.where}: the server has {total} bytes but the index announced {self.expected_size}"
            )


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise IntegrityError(f"invalid {name} header {value!r}") from None
    return number if number >= 0 else None
