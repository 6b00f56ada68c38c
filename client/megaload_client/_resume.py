"""Resumable transfer of one shard: which ``Range`` to ask for, and what an answer means.

No network here; the clients drive it. Call order for one shard::

    transfer = ShardTransfer(sink, expected_size=index_size)
    while not done:                               # one iteration per HTTP attempt
        headers = transfer.request_headers()      # Range + If-Range once bytes are held
        ... send GET with headers ...
        transfer.begin(status, response_headers)  # 200: (re)start at 0, 206: continue
        for chunk in body: transfer.write(chunk)  # may raise mid-body: try again
    transfer.finish()                             # size check

The sink is where bytes go: a preallocated buffer (``state_dict``), an ``.incomplete``
file (``download``) or a streaming parser (``iter_tensors``, which cannot restart). A
server that answers 200 to a range request is sending the whole file again (its ETag no
longer matches ``If-Range``, or it ignores ranges): the sink is reset and filled from 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO, Protocol

from ._exceptions import IntegrityError

__all__ = [
    "Sink",
    "BufferSink",
    "FileSink",
    "ShardTransfer",
    "parse_content_range",
    "is_strong_etag",
]

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
    return bool(etag) and not etag.startswith("W/") and etag.startswith('"') and etag.endswith('"')


class Sink(Protocol):
    """Where the bytes of one shard go. ``size`` is how many are held."""

    size: int

    def write(self, data: memoryview) -> None: ...
    def reset(self) -> None: ...


class BufferSink:
    """A preallocated ``bytearray`` of the shard's exact size, filled in place."""

    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray(capacity)
        self._view = memoryview(self.buffer)
        self.size = 0

    def write(self, data: memoryview) -> None:
        end = self.size + len(data)
        if end > len(self.buffer):
            raise IntegrityError(f"received more than the {len(self.buffer)} bytes announced")
        self._view[self.size : end] = data
        self.size = end

    def reset(self) -> None:
        self.size = 0

    def release(self) -> None:
        self._view.release()


class FileSink:
    """Appends to a file, resuming after whatever it already holds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self.size = self._file.seek(0, os.SEEK_END)

    def write(self, data: memoryview) -> None:
        self._file.write(data)
        self.size += len(data)

    def reset(self) -> None:
        self._file.seek(0)
        self._file.truncate(0)
        self.size = 0

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
    """

    def __init__(
        self,
        sink: Sink,
        expected_size: int | None,
        *,
        etag: str | None = None,
        on_restart: Callable[[int], None] | None = None,
        where: str = "shard",
    ) -> None:
        self.sink = sink
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
            if is_strong_etag(self.etag):
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

    def finish(self) -> None:
        if self.expected_size is None or self.offset != self.expected_size:
            raise IntegrityError(
                f"{self.where}: received {self.offset} bytes, expected {self.expected_size}"
            )

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
