"""Downloading a state dict into a directory: file names, resumption, checks, the index.

The directory ends up in the layout Hugging Face tools read: the shard files named by the
service's index plus ``model.safetensors.index.json`` (``metadata.total_size`` and
``weight_map``). While a shard is in flight it lives in ``<file>.<tag>.incomplete`` where
``tag`` is derived from the shard's ETag, so bytes of a different version of the shard are
never resumed onto; stale ``.incomplete`` files of the same shard are removed. A shard is
renamed to its final name only once its size and header (and, with ``verify``, every
tensor's checksum) match the index. The clients check header and checksums while the
bytes are written (a :class:`~._shards.ShardChecker` fed by the transfer, after replaying
what a resumed ``.incomplete`` file already held), so :meth:`ShardFiles.commit` then only
checks the size on disk; files found finished from an earlier run are read and verified in
full. A file that failed a check is deleted, never resumed onto. The index file is written
last, atomically.

With ``names="hf"`` the directory is a Hugging Face model directory (``from_pretrained``
reads it): the shards hold the Hugging Face tensors, and the service's Hub endpoint gives
the other files of the model (``config.json``, ``generation_config.json``, tokenizer files),
each written whole and atomically (:func:`hub_extra_files`, :func:`write_file`).

A download directory holds one consistent set of shards: after a download its
``*.safetensors`` files are exactly those its index names, so a loader that globs them
loads each tensor once. Shard files of this naming (``model-00001-of-00006.safetensors``)
that the new index does not name are what an earlier download with other options left,
and are removed once the new index is written. Any other ``*.safetensors`` file is not
ours: the download refuses, before fetching anything, with :class:`ForeignFilesError`
naming them, unless ``allow_foreign_files=True`` (then they are left alone, and the
directory is no longer one set). See :func:`directory_set`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ._checksums import TensorVerifier
from ._exceptions import ForeignFilesError, IntegrityError
from ._resume import FileSink
from ._safetensors import SafetensorsError, SafetensorsHeader, header_length, parse_header
from ._shards import check_shard_header
from .types import ShardInfo, StateDictIndex

__all__ = [
    "INDEX_FILENAME",
    "DownloadResult",
    "ShardFiles",
    "read_file_header",
    "verify_file",
    "write_index",
    "write_file",
    "hub_extra_files",
    "directory_set",
    "SHARD_NAME",
]

INDEX_FILENAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
"""The service's shard file names (Hugging Face's): ``model-00001-of-00006.safetensors``."""


@dataclass
class DownloadResult:
    """What :meth:`Client.download` did.

    ``checksums_verified`` is False when tensors were checked by size only: ``verify=False``
    was passed, the service listed no checksums, or it listed them in an algorithm this
    client does not know (warned about).
    """

    directory: Path
    index_file: Path
    shard_files: list[Path]
    total_bytes: int
    downloaded_bytes: int = 0
    reused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    checksums_verified: bool = False
    skipped: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    """``names="hf"``: the model's other files written beside the shards (config, tokenizer)."""


def read_file_header(path: Path) -> SafetensorsHeader:
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = header_length(prefix)
        raw = f.read(length)
    if len(raw) != length:
        raise SafetensorsError(f"file ends inside its {length}-byte header")
    return parse_header(raw)


def verify_file(path: Path, shard: ShardInfo, index: StateDictIndex, verifier: TensorVerifier) -> None:
    """Size, header and (when the verifier is active) every tensor's checksum."""
    where = f"shard {shard.index} ({path.name})"
    size = path.stat().st_size
    if size != shard.size:
        raise IntegrityError(f"{where}: {size} bytes on disk, index says {shard.size}")
    try:
        header = read_file_header(path)
    except SafetensorsError as exc:
        raise IntegrityError(f"{where} is not valid safetensors: {exc}") from None
    check_shard_header(header, shard, index)
    if not verifier.active or header.data_length == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            for entry in header.entries:
                start = header.data_start + entry.begin
                with view[start : start + entry.nbytes] as part:
                    verifier.check(entry.name, part, where=f" in {where}")
        finally:
            view.release()


class ShardFiles:
    """The final and in-flight files of one shard in the download directory."""

    def __init__(self, directory: Path, shard: ShardInfo) -> None:
        self.directory = directory
        self.shard = shard
        self.final = directory / shard.filename

    def incomplete(self, etag: str | None) -> Path:
        tag = hashlib.sha256((etag or "no-etag").encode()).hexdigest()[:16]
        return self.directory / f"{self.shard.filename}.{tag}.incomplete"

    def remove_stale(self, keep: Path) -> None:
        for path in self.directory.glob(f"{_glob_escape(self.shard.filename)}.*.incomplete"):
            if path != keep:
                path.unlink(missing_ok=True)

    def final_is_valid(self, index: StateDictIndex, verifier: TensorVerifier) -> bool:
        if not self.final.is_file():
            return False
        try:
            verify_file(self.final, self.shard, index, verifier)
        except IntegrityError:
            return False
        return True

    def open(self, etag: str | None) -> FileSink:
        path = self.incomplete(etag)
        self.remove_stale(keep=path)
        sink = FileSink(path)
        if sink.size > self.shard.size:  # longer than the shard can be: start over
            sink.reset()
        return sink

    def commit(
        self, sink: FileSink, index: StateDictIndex, verifier: TensorVerifier, *, checked: bool = False
    ) -> None:
        """Check the finished ``.incomplete`` file, then rename it into place atomically.

        ``checked``: a :class:`~._shards.ShardChecker` already saw every byte of the file,
        so only its size on disk is checked here instead of reading it back.
        """
        sink.close()
        path = Path(sink.path)
        try:
            if checked:
                size = path.stat().st_size
                if size != self.shard.size:
                    raise IntegrityError(
                        f"shard {self.shard.index} ({path.name}): {size} bytes on disk, index says {self.shard.size}"
                    )
            else:
                verify_file(path, self.shard, index, verifier)
        except IntegrityError:
            path.unlink(missing_ok=True)  # never resume onto bytes known to be wrong
            raise
        os.replace(path, self.final)

    def discard(self, sink: FileSink) -> None:
        """Close and delete an ``.incomplete`` file whose bytes failed a check."""
        sink.close()
        Path(sink.path).unlink(missing_ok=True)


def directory_set(directory: Path, index: StateDictIndex, *, allow_foreign_files: bool = False) -> list[Path]:
    """The shard files in ``directory`` that a download of ``index`` makes stale (ours, by
    their name, and not named by ``index``); :class:`ForeignFilesError` if other
    ``*.safetensors`` files are there, unless ``allow_foreign_files``."""
    wanted = {shard.filename for shard in index.shards}
    stale: list[Path] = []
    foreign: list[Path] = []
    for path in sorted(directory.glob("*.safetensors")):
        if path.name in wanted or not path.is_file():
            continue
        (stale if SHARD_NAME.fullmatch(path.name) else foreign).append(path)
    if foreign and not allow_foreign_files:
        raise ForeignFilesError(
            f"{directory} holds safetensors files this download did not write: "
            f"{', '.join(p.name for p in foreign)}; a loader reading *.safetensors there would load them "
            "with the new shards. Move them, choose another directory, or pass allow_foreign_files=True",
            foreign,
        )
    return stale


def write_index(directory: Path, index: StateDictIndex) -> Path:
    """Write ``model.safetensors.index.json`` (Hugging Face's shape) atomically."""
    document = {"metadata": {"total_size": index.total_size}, "weight_map": dict(sorted(index.weight_map.items()))}
    return write_file(directory, INDEX_FILENAME, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def hub_extra_files(info: dict) -> list[str]:
    """The files of a Hub model info (``siblings``) that a download writes besides the shards
    and the index: everything but ``*.safetensors`` and the index, at the top level only."""
    names = []
    for sibling in info.get("siblings") or []:
        name = sibling.get("rfilename") if isinstance(sibling, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            continue
        if name.endswith(".safetensors") or name == INDEX_FILENAME:
            continue
        names.append(name)
    return names


def write_file(directory: Path, name: str, data: bytes) -> Path:
    """Write ``directory/name`` atomically (a temporary file beside it, then renamed)."""
    target = directory / name
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    return target


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)

