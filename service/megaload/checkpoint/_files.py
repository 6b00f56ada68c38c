"""Opening the files of a checkpoint: where they may lie, and how much of a small one is read.

**Confinement.** A checkpoint names files by itself: data files in ``.metadata``, tokenizer
files in ``run_config.yaml`` or ``common.pt``, and any member may be a symlink. A caller that
polices which directories may be read (the service: its checkpoint roots) says so once::

    with confined_to([root, ...]):
        load_megatron_model(path)      # every file opened inside is checked

Inside the block every file the library opens is resolved (:func:`os.path.realpath`, every
symlink followed) and must lie inside one of the roots, else :class:`OutsideRootsError`
(a :class:`CheckpointError` and a PermissionError) naming the file as the checkpoint named it
and where it leads. The resolved path is the one opened. The roots hold for the calling
thread (a :mod:`contextvars` variable; every read here happens on the caller's thread).
Outside a block (plain library use) files are opened where they are.

**Size limits.** Small files (JSON and YAML configs, the tracker, pickled metadata) are read
whole, so each kind has a limit far above what real checkpoints hold (the ``*_LIMIT``
constants); a larger file is refused before it is read, with the limit in the message.
Only regular files are opened: a FIFO or device in a checkpoint is refused, not waited on.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ._errors import CorruptCheckpointError, OutsideRootsError

__all__ = [
    "confined_to",
    "allowed_roots",
    "check_allowed",
    "open_checked",
    "read_limited",
    "read_json",
    "TRACKER_LIMIT",
    "METADATA_JSON_LIMIT",
    "RUN_CONFIG_LIMIT",
    "COMMON_PT_LIMIT",
    "DCP_METADATA_LIMIT",
    "TOKENIZER_CONFIG_LIMIT",
    "TOKENIZER_VOCAB_LIMIT",
]

# What real files hold, and the limit (orders of magnitude above):
TRACKER_LIMIT = 64  # latest_checkpointed_iteration.txt: "100" or "release"
METADATA_JSON_LIMIT = 64 * 1024  # metadata.json: about 120 bytes (four keys)
RUN_CONFIG_LIMIT = 4 * 1024 * 1024  # run_config.yaml: 10-30 KB
COMMON_PT_LIMIT = 256 * 1024 * 1024  # common.pt: 1-100 KB (version, iteration, args, param groups)
DCP_METADATA_LIMIT = 1024 * 1024 * 1024  # .metadata: grows with tensors x shards; tens of MB at 70B
TOKENIZER_CONFIG_LIMIT = 16 * 1024 * 1024  # tokenizer_config.json, config.json: up to ~2 MB
TOKENIZER_VOCAB_LIMIT = 256 * 1024 * 1024  # vocab.json, merges.txt, tokenizer.model: up to ~40 MB

_ROOTS: contextvars.ContextVar[tuple[Path, ...] | None] = contextvars.ContextVar("megaload_roots", default=None)


@contextlib.contextmanager
def confined_to(roots: Iterable[str | os.PathLike] | None) -> Iterator[None]:
    """Confine every file this thread opens through the library to ``roots`` (``None``: lift
    any confinement) until the block ends."""
    value = None if roots is None else tuple(Path(os.path.realpath(r)) for r in roots)
    token = _ROOTS.set(value)
    try:
        yield
    finally:
        _ROOTS.reset(token)


def allowed_roots() -> tuple[Path, ...] | None:
    """The roots this thread is confined to, or None when it is not."""
    return _ROOTS.get()


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def check_allowed(path: str | os.PathLike, *, what: str | None = None) -> Path:
    """The path to open for ``path``: itself when not confined, else its resolved form, which
    must lie inside a root (:class:`OutsideRootsError` otherwise). ``what`` names the file in
    the message (default: the path)."""
    roots = _ROOTS.get()
    if roots is None:
        return Path(path)
    real = Path(os.path.realpath(path))
    if any(_inside(real, root) for root in roots):
        return real
    named = what or os.fspath(path)
    shown = ", ".join(str(r) for r in roots) or "none"
    target = "" if os.fspath(real) == os.fspath(path) else f" (it resolves to {real})"
    raise OutsideRootsError(
        f"{named} lies outside the directories checkpoints may be read from{target}; allowed: {shown}",
        path=path,
    )


def _open_regular(path: Path, *, what: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        raise CorruptCheckpointError(f"{what} is missing", path=path) from e
    except OSError as e:
        raise CorruptCheckpointError(f"cannot read {what}: {e.strerror}", path=path) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptCheckpointError(f"{what} is not a regular file", path=path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_checked(path: str | os.PathLike, *, what: str | None = None) -> BinaryIO:
    """An unbuffered binary file object for ``path`` (a regular file, inside the roots when
    confined)."""
    what = what or os.fspath(path)
    fd, _ = _open_regular(check_allowed(path, what=what), what=what)
    return os.fdopen(fd, "rb", buffering=0)


def read_limited(path: str | os.PathLike, limit: int, *, what: str | None = None, kind: str = "this file") -> bytes:
    """The whole content of a small file, refused (:class:`CorruptCheckpointError` naming
    ``limit``) when it holds more than ``limit`` bytes. ``kind`` says which limit it is."""
    what = what or os.fspath(path)
    fd, st = _open_regular(check_allowed(path, what=what), what=what)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if st.st_size > limit:
            raise CorruptCheckpointError(
                f"{what} is {st.st_size} bytes; the limit for {kind} is {limit} bytes", path=path
            )
        chunks, total = [], 0
        while total <= limit:
            chunk = f.read(limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:  # grew while being read
        raise CorruptCheckpointError(f"{what} holds over {limit} bytes, the limit for {kind}", path=path)
    return b"".join(chunks)


def read_json(path: str | os.PathLike, limit: int, *, what: str | None = None, kind: str = "this file") -> Any:
    """A small JSON file, parsed; refused (:class:`CorruptCheckpointError`) when over
    ``limit`` bytes, not UTF-8, not JSON, or nested too deeply to parse."""
    what = what or os.fspath(path)
    data = read_limited(path, limit, what=what, kind=kind)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{what} is not UTF-8 text: {e}", path=path) from e
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"{what} is not valid JSON: {e}", path=path) from e
    except RecursionError:
        raise CorruptCheckpointError(f"{what} is nested too deeply to be read", path=path) from None
