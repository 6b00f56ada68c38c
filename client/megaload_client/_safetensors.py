"""Reading the safetensors format: whole files in one buffer, or as a stream of chunks.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian ``N``, then
``N`` bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets":
[begin, end]}`` (offsets relative to the end of the header, contiguous, no holes) plus an
optional ``"__metadata__"`` of strings, then the data.

Nothing here imports torch at module level: :func:`tensor_from_buffer` imports it when it
is first called, so ``import megaload_client`` stays torch-free.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._memory import fresh_buffer

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "SafetensorsError",
    "TensorEntry",
    "SafetensorsHeader",
    "header_length",
    "parse_header",
    "parse_buffer_header",
    "torch_dtype",
    "tensor_from_buffer",
    "tensors_from_buffer",
    "SafetensorsStream",
    "require_torch",
]

# Bytes per element of each safetensors dtype tag.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# safetensors tag -> attribute of the torch module.
_TORCH_NAMES: dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the reference implementation enforces
_SCRATCH_BYTES = 64 * 1024  # SafetensorsStream.window while the header is read


class SafetensorsError(ValueError):
    """Bytes that are not a valid safetensors file (bad length, JSON, offsets or dtype)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header. ``begin``/``end`` are offsets into the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: tensors in data order, metadata, and where the data starts."""

    entries: tuple[TensorEntry, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0  # 8 + header length: file offset of data byte 0

    @property
    def data_length(self) -> int:
        return self.entries[-1].end if self.entries else 0

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_length


def header_length(prefix: bytes | bytearray | memoryview) -> int:
    """The JSON header's byte length from a file's first 8 bytes."""
    if len(prefix) < 8:
        raise SafetensorsError(f"need 8 bytes for the header length, got {len(prefix)}")
    (length,) = struct.unpack("<Q", bytes(prefix[:8]))
    if length == 0 or length > MAX_HEADER_BYTES:
        raise SafetensorsError(
            f"header length {length} is outside 1..{MAX_HEADER_BYTES} bytes"
        )
    return length


def _entry(name: Any, info: Any) -> TensorEntry:
    if not isinstance(name, str) or not isinstance(info, dict):
        raise SafetensorsError(f"header entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} are invalid")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(
            f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} "
            f"of {dtype} (expected {expected})"
        )
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def parse_header(raw: bytes | bytearray | memoryview, *, data_start: int | None = None) -> SafetensorsHeader:
    """Parse the JSON header bytes (without the 8-byte length prefix).

    Checks every entry and that the data offsets tile ``[0, data_length)`` without holes or
    overlaps, as the format requires.
    """
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"header is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SafetensorsError("header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError("__metadata__ must map strings to strings")
    entries = sorted((_entry(n, i) for n, i in doc.items()), key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise SafetensorsError(
                f"tensor {entry.name!r} starts at data offset {entry.begin}, expected {position}"
            )
        position = entry.end
    start = 8 + len(raw) if data_start is None else data_start
    return SafetensorsHeader(tuple(entries), metadata, start)


def parse_buffer_header(buffer: bytes | bytearray | memoryview) -> SafetensorsHeader:
    """Parse the header of a complete file held in ``buffer`` and check its total size."""
    view = memoryview(buffer)
    length = header_length(view[:8])
    if 8 + length > len(view):
        raise SafetensorsError(f"header of {length} bytes does not fit in {len(view)} bytes")
    header = parse_header(view[8 : 8 + length])
    if header.file_size != len(view):
        raise SafetensorsError(
            f"file is {len(view)} bytes but its header describes {header.file_size}"
        )
    return header


def torch_dtype(tag: str) -> torch.dtype:
    import torch

    try:
        return getattr(torch, _TORCH_NAMES[tag])
    except (KeyError, AttributeError):
        raise SafetensorsError(f"dtype {tag!r} is not supported by this torch") from None


def tensor_from_buffer(buffer: bytearray | memoryview, entry: TensorEntry, offset: int = 0) -> torch.Tensor:
    """A tensor viewing ``buffer[offset + entry.begin : offset + entry.end]``; no copy.

    The tensor keeps ``buffer`` alive. A tensor with no elements gets fresh (empty) storage,
    since ``torch.frombuffer`` refuses a zero count.
    """
    import torch

    dtype = torch_dtype(entry.dtype)
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    flat = torch.frombuffer(
        buffer, dtype=dtype, count=entry.nbytes // DTYPE_SIZES[entry.dtype], offset=offset + entry.begin
    )
    return flat.view(entry.shape)


def tensors_from_buffer(buffer: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Every tensor of a complete safetensors file held in ``buffer``, all sharing it."""
    header = parse_buffer_header(buffer)
    return {e.name: tensor_from_buffer(buffer, e, header.data_start) for e in header.entries}


class SafetensorsStream:
    """Push parser: feed the bytes of one file in chunks of any size, get whole tensors out.

    Memory is bounded by the largest tensor: each tensor's bytes are collected into their
    own buffer (:func:`~._memory.fresh_buffer`: a ``bytearray``, or an anonymous mapping for
    large tensors) and handed out as soon as they are complete. Call order::

        stream = SafetensorsStream()
        for chunk in chunks:
            for entry, data in stream.feed(chunk):   # data: a buffer of entry.nbytes
                ...
        stream.close()                               # raises if the file was cut short

    A reader can also fill the tensors' own memory instead of handing over chunks:
    ``window(limit)`` is where the next bytes go (the current tensor's buffer, or a small
    scratch buffer while the header is read), ``commit(n)`` takes ``n`` bytes read into it
    and returns the tensors finished, as ``feed`` does.

    ``destination``, when given, supplies each tensor's buffer instead of a fresh one:
    called with the entry when its first byte is due, it returns writable bytes of exactly
    ``entry.nbytes`` (the memory of a tensor the caller already has).
    """

    def __init__(self, destination: Callable[[TensorEntry], Any] | None = None) -> None:
        self._destination = destination
        self._reader = HeaderReader()
        self._header: SafetensorsHeader | None = None
        self._next = 0  # index of the tensor being filled
        self._buffer: Any = None  # its buffer (bytearray, mapping or the caller's memory); None past the end
        self._filled = 0
        self.bytes_seen = 0
        self._scratch: memoryview | None = None
        self._in_place = False

    @property
    def header(self) -> SafetensorsHeader | None:
        return self._header

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[tuple[TensorEntry, Any]]:
        view = memoryview(chunk).cast("B")
        self.bytes_seen += len(view)
        done: list[tuple[TensorEntry, Any]] = []
        if self._header is None:
            view = self._reader.take(view)
            if self._reader.header is None:
                return done
            self._header = self._reader.header
            self._start_tensor()
            done.extend(self._empty_tensors())
        while len(view):
            if self._buffer is None:
                raise SafetensorsError(
                    f"{len(view)} bytes past the end of the data the header describes"
                )
            take = min(len(view), len(self._buffer) - self._filled)
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            self._tensor_done(done)
        return done

    def window(self, limit: int) -> memoryview:
        self._in_place = self._header is not None and self._buffer is not None
        if self._in_place:
            take = min(limit, len(self._buffer) - self._filled)
            return memoryview(self._buffer)[self._filled : self._filled + take]
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
        return self._scratch[: min(limit, _SCRATCH_BYTES)]

    def commit(self, n: int) -> list[tuple[TensorEntry, Any]]:
        if not self._in_place:
            assert self._scratch is not None
            return self.feed(self._scratch[:n])
        self.bytes_seen += n
        self._filled += n
        done: list[tuple[TensorEntry, Any]] = []
        self._tensor_done(done)
        return done

    def close(self) -> None:
        if self._header is None or self._next < len(self._header.entries):
            raise SafetensorsError(f"stream ended after {self.bytes_seen} bytes, inside the file")

    def _tensor_done(self, done: list[tuple[TensorEntry, Any]]) -> None:
        """The current tensor, if its buffer is full, and the empty ones after it, into ``done``."""
        if self._header is not None and self._filled == len(self._buffer):
            done.append((self._header.entries[self._next], self._buffer))
            self._next += 1
            self._start_tensor()
            done.extend(self._empty_tensors())

    def _start_tensor(self) -> None:
        entries = self._header.entries if self._header else ()
        if self._next < len(entries):
            entry = entries[self._next]
            buffer = fresh_buffer(entry.nbytes) if self._destination is None else self._destination(entry)
            self._buffer, self._filled = buffer, 0
        else:
            self._buffer = None

    def _empty_tensors(self) -> Iterator[tuple[TensorEntry, Any]]:
        while self._header is not None and self._buffer is not None and len(self._buffer) == 0:
            yield self._header.entries[self._next], self._buffer
            self._next += 1
            self._start_tensor()


class HeaderReader:
    """Collects a file's length prefix and header from chunks of any size: ``take(view)``
    consumes the header bytes at the start of ``view`` and returns the rest; ``header`` is
    set once the whole header is in. :class:`SafetensorsError` when it is not valid."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self.header: SafetensorsHeader | None = None

    def take(self, view: memoryview) -> memoryview:
        need = 8 if len(self._pending) < 8 else 8 + header_length(self._pending)
        while True:
            take = min(len(view), need - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < need:
                return view
            if need == 8:
                need = 8 + header_length(self._pending)
                continue
            self.header = parse_header(self._pending[8:])
            self._pending = bytearray()
            return view


def require_torch() -> None:
    """Fail early, with the fix, when torch tensors are asked for and torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(
            "this call returns torch tensors and needs torch: pip install 'megaload-client[torch]'"
        ) from None
