"""The records inside a ``.distcp`` data file, read in steps that let other threads run.

torch.distributed.checkpoint writes each item of a torch_dist checkpoint at an offset of a
``.distcp`` file (the ``.metadata`` says which file, offset and length): a byte item as its
raw bytes, a tensor as a whole ``torch.save`` archive (zip format, the storage stored
uncompressed). DCP's own reader ``torch.load``s each tensor archive through a Python file
object; the storage bytes are then read inside one C call that keeps the GIL for as long as
the read takes, so a server's event loop in the same process cannot answer meanwhile (the
figures: docs/benchmarks.md, "Measurements formerly in docstrings").

Here the archive is taken apart instead:

1. its zip directory is read with :mod:`zipfile` (small reads) to find ``data.pkl`` and the
   one storage record, and where that record's bytes start (local header + name + extra);
2. every global ``data.pkl`` refers to must be one of torch's built-in weights-only globals
   (a tensor needs nothing else; globals other code added to torch's process-wide safe list
   do not count), else :class:`UnsafeCheckpointError`;
3. ``torch.load(weights_only=True, map_location="meta")`` of the archive gives the tensor's
   dtype, shape, strides and storage offset without reading the storage;
4. the storage bytes are read with ``readinto`` in bounded chunks (a file read releases the
   GIL): straight into the destination tensor when the stored tensor is the plain contiguous
   image of it; through a small reused scratch buffer, chunk by chunk ``copy_``-ed (which
   releases the GIL too), when only the dtype or the device differs; else into a fresh
   buffer that the caller copies from (a transposed record, a non-contiguous target).
   Freeing a large buffer holds the GIL (``munmap``), which the scratch buffer avoids.

An archive that does not fit this shape (several storages, compression, a foreign byte
order) is read whole and decoded by ``torch.load(weights_only=True)`` as DCP does, after the
same check of its globals.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import CorruptCheckpointError, UnsafeCheckpointError

__all__ = ["CHUNK_BYTES", "FileWindow", "TensorRecord", "open_tensor_record", "read_bytes", "read_into"]

# Bytes per read call: a page-cache read of this size takes a few milliseconds, and the GIL
# is free during it, so chunking bounds only how long between the loop's checks for errors.
CHUNK_BYTES = 16 << 20

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra-field lengths
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


class FileWindow(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes at ``offset`` of an unbuffered file."""

    def __init__(self, raw: io.RawIOBase, offset: int, length: int) -> None:
        super().__init__()
        self._raw = raw
        self._offset = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self._length
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._length - self._pos)
        if want <= 0:
            return 0
        self._raw.seek(self._offset + self._pos)
        got = self._raw.readinto(view[:want]) or 0
        self._pos += got
        return got


def read_into(window: FileWindow, start: int, dest: memoryview, *, what: str) -> None:
    """Fill ``dest`` from ``window`` at ``start``, ``CHUNK_BYTES`` per read call."""
    window.seek(start)
    done, total = 0, len(dest)
    while done < total:
        got = window.readinto(dest[done : min(done + CHUNK_BYTES, total)])
        if not got:
            raise CorruptCheckpointError(f"{what}: the data file ends {total - done} bytes early", path=what)
        done += got


def read_bytes(window: FileWindow, *, what: str) -> bytearray:
    """The whole window, read in chunks."""
    out = bytearray(window.seek(0, io.SEEK_END))
    read_into(window, 0, memoryview(out), what=what)
    return out


def _check_globals(pickle_bytes: bytes, *, what: str) -> None:
    """Refuse a tensor archive whose pickle names anything beyond torch's built-in
    weights-only globals (read statically; nothing is built)."""
    from torch import _weights_only_unpickler

    try:
        referenced = set(_weights_only_unpickler.get_globals_in_pkl(io.BytesIO(pickle_bytes)))
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
        raise CorruptCheckpointError(f"{what}: unreadable tensor pickle: {e}", path=what) from e
    foreign = sorted(referenced - set(_weights_only_unpickler._get_allowed_globals()))
    if foreign:
        raise UnsafeCheckpointError(
            f"{what} refers to {foreign[0]}, which is not one of torch's weights-only tensor types; "
            f"refusing to unpickle it",
            path=what,
        )


def _load_weights_only(source: Any, map_location: str, *, what: str) -> torch.Tensor:
    try:
        tensor = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{what} cannot be loaded safely: {e}", path=what) from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(f"{what}: unreadable tensor archive: {e}", path=what) from e
    if not isinstance(tensor, torch.Tensor):
        raise CorruptCheckpointError(f"{what}: expected a tensor, found {type(tensor).__name__}", path=what)
    return tensor


@dataclass
class TensorRecord:
    """A tensor archive in a data file: the tensor's geometry (a meta tensor) and where its
    storage bytes lie in the window, or the whole tensor already decoded (``loaded``)."""

    window: FileWindow
    what: str
    meta: torch.Tensor | None = None
    data_start: int = 0
    loaded: torch.Tensor | None = None

    def read(self) -> torch.Tensor:
        """The stored tensor on the CPU (its storage read in chunks into a fresh buffer)."""
        if self.loaded is not None:
            return self.loaded
        meta = self.meta
        storage = torch.empty(meta.untyped_storage().nbytes(), dtype=torch.uint8)
        if storage.numel():
            read_into(self.window, self.data_start, memoryview(storage.numpy()), what=self.what)
        flat = storage.view(meta.dtype)
        try:
            return flat.as_strided(meta.size(), meta.stride(), meta.storage_offset())
        except RuntimeError as e:
            raise CorruptCheckpointError(
                f"{self.what}: tensor geometry outside its storage: {e}", path=self.what
            ) from e

    def read_contiguous_into(self, source_view: torch.Tensor, target: torch.Tensor, scratch: torch.Tensor) -> bool:
        """Fill ``target`` with ``source_view`` (a view of :attr:`meta`) when both are plain
        contiguous images of the same shape: read straight into a CPU target of the same
        dtype, else a ``scratch`` (uint8, CPU) at a time, each chunk ``copy_``-ed (cast, or
        moved to the target's device) into its slice of the target. False when not possible."""
        if self.loaded is not None or self.meta is None:
            return False
        if not (
            type(target) is torch.Tensor
            and target.is_contiguous()
            and source_view.is_contiguous()
            and target.size() == source_view.size()
            and not target.is_conj()
            and not target.is_neg()
        ):
            return False
        itemsize = source_view.element_size()
        start = self.data_start + source_view.storage_offset() * itemsize
        if target.numel() == 0:
            return True
        if target.device.type == "cpu" and target.dtype == source_view.dtype:
            read_into(self.window, start, memoryview(target.reshape(-1).view(torch.uint8).numpy()), what=self.what)
            return True
        flat, step = target.view(-1), scratch.numel() // itemsize
        for first in range(0, flat.numel(), step):
            count = min(step, flat.numel() - first)
            chunk = scratch[: count * itemsize]
            read_into(self.window, start + first * itemsize, memoryview(chunk.numpy()), what=self.what)
            flat[first : first + count].copy_(chunk.view(source_view.dtype))
        return True


def _decoded_whole(window: FileWindow, *, what: str) -> TensorRecord:
    data = io.BytesIO(read_bytes(window, what=what))
    return TensorRecord(window, what, loaded=_load_weights_only(data, "cpu", what=what))


def open_tensor_record(window: FileWindow, *, what: str, seen: dict[bytes, torch.Tensor] | None = None) -> TensorRecord:
    """Take apart the ``torch.save`` archive in ``window``; reads only its small parts.

    ``seen`` (optional, kept by the caller across the records of one load) maps a record's
    ``data.pkl`` bytes to the meta tensor they decode to: a checkpoint's layers repeat the same
    few tensor geometries, and the same pickle bytes (storage key, dtype, element count, size,
    stride and offset are all in them) always decode to the same meta tensor, so each distinct
    pickle is checked and unpickled once."""
    magic = bytearray(len(_LOCAL_HEADER_SIGNATURE))
    window.seek(0)
    if window.readinto(magic) != len(magic) or magic != _LOCAL_HEADER_SIGNATURE:
        # torch's legacy (pre-zip) format, which DCP never writes: decoded as DCP would
        return _decoded_whole(window, what=what)
    try:
        archive = zipfile.ZipFile(window)
        infos = archive.infolist()
        pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CorruptCheckpointError(
                f"{what}: expected one data.pkl in the tensor archive, found {len(pickles)}", path=what
            )
        prefix = pickles[0].filename[: -len("data.pkl")]
        pickle_bytes = archive.read(pickles[0])
        known = None if seen is None else seen.get(pickle_bytes)
        if known is None:
            _check_globals(pickle_bytes, what=what)
        storages = [i for i in infos if i.filename.startswith(prefix + "data/")]
        order = archive.read(prefix + "byteorder") if prefix + "byteorder" in archive.NameToInfo else b"little"
    except (zipfile.BadZipFile, KeyError, EOFError) as e:
        raise CorruptCheckpointError(f"{what}: unreadable tensor archive: {e}", path=what) from e
    plain = (
        len(storages) == 1 and storages[0].compress_type == zipfile.ZIP_STORED and order == sys.byteorder.encode()
    )
    if not plain:
        return _decoded_whole(window, what=what)
    info = storages[0]
    header = bytearray(_LOCAL_HEADER.size)
    read_into(window, info.header_offset, memoryview(header), what=what)
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_HEADER_SIGNATURE:
        raise CorruptCheckpointError(f"{what}: bad zip local header for {info.filename}", path=what)
    data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if known is not None:
        meta = known
    else:
        window.seek(0)
        meta = _load_weights_only(window, "meta", what=what)
        if seen is not None:
            seen[pickle_bytes] = meta
    nbytes = meta.untyped_storage().nbytes()
    if nbytes != info.file_size or data_start + nbytes > window.seek(0, io.SEEK_END):
        raise CorruptCheckpointError(
            f"{what}: storage record {info.filename} holds {info.file_size} bytes at {data_start}, "
            f"the tensor needs {nbytes}",
            path=what,
        )
    return TensorRecord(window, what, meta=meta, data_start=data_start)
