"""Which file system paths a request may name: the checkpoint and save roots.

A path from a request is checked before anything touches the disk with it:

1. it must be text that the file system can hold: no NUL byte, encodable as UTF-8, at most
   :data:`MAX_PATH_BYTES` bytes in all and :data:`MAX_NAME_BYTES` per component
   (:class:`~megaload.errors.BadRequestError`, 400);
2. it may not contain ``..`` components (:class:`~megaload.errors.ForbiddenPathError`, 403);
3. a relative path is taken relative to the first root;
4. it is resolved with :func:`os.path.realpath` (every symlink followed, also for the parts
   that do not exist yet), must still fit :data:`MAX_PATH_BYTES` (400) and must then lie
   inside one of the roots (403).

The resolved path is what the service then uses, so a symlink that points elsewhere cannot
be swapped in between the check and the use of a parent directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import BadRequestError, ForbiddenPathError

__all__ = ["PathPolicy", "MAX_PATH_BYTES", "MAX_NAME_BYTES"]

MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX


def _printable(raw: str) -> str:
    return raw.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:300]


def check_path_text(raw: str, *, field: str) -> None:
    """Raise :class:`BadRequestError` unless ``raw`` is a path the file system could hold."""
    if not isinstance(raw, str) or not raw:
        raise BadRequestError(f"{field}: a path is required", field=field)
    if "\x00" in raw:
        raise BadRequestError(f"{field}: path contains a NUL byte: {_printable(raw)!r}", field=field)
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(f"{field}: path is not valid UTF-8 text (lone surrogate)", field=field) from None
    if len(encoded) > MAX_PATH_BYTES:
        raise BadRequestError(
            f"{field}: path is {len(encoded)} bytes long; the limit is {MAX_PATH_BYTES}",
            field=field,
            limit=MAX_PATH_BYTES,
        )
    for part in raw.split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise BadRequestError(
                f"{field}: path component {_printable(part[:40])!r}... is {len(part.encode('utf-8'))} bytes; "
                f"the limit is {MAX_NAME_BYTES}",
                field=field,
                limit=MAX_NAME_BYTES,
            )


class PathPolicy:
    """Resolves request paths against the read (checkpoint) and write (save) roots."""

    def __init__(self, checkpoint_roots: Sequence[Path], save_roots: Sequence[Path]) -> None:
        self.checkpoint_roots = [Path(os.path.realpath(r)) for r in checkpoint_roots]
        self.save_roots = [Path(os.path.realpath(r)) for r in save_roots]

    def resolve_checkpoint(self, raw: str, *, field: str = "path") -> Path:
        """A path to read a checkpoint (or tokenizer) from; must resolve inside a checkpoint root."""
        return self._resolve(raw, self.checkpoint_roots, field=field, kind="checkpoint")

    def resolve_save(self, raw: str, *, field: str = "path") -> Path:
        """A path to write a checkpoint to; must resolve strictly inside a save root."""
        path = self._resolve(raw, self.save_roots, field=field, kind="save")
        if path in self.save_roots:
            raise BadRequestError(
                f"{field}: {path} is a save root itself; name a directory inside it", field=field
            )
        return path

    def ensure_inside_checkpoint_roots(self, path: Path, *, field: str = "path") -> Path:
        """Re-check a path found on disk (an iteration directory named by a tracker file)."""
        real = Path(os.path.realpath(path))
        if not any(_inside(real, root) for root in self.checkpoint_roots):
            raise ForbiddenPathError(
                f"{field}: {path} resolves (symlinks followed) outside the checkpoint roots", field=field, path=str(path)
            )
        return real

    def _resolve(self, raw: str, roots: list[Path], *, field: str, kind: str) -> Path:
        check_path_text(raw, field=field)
        if not roots:
            raise ForbiddenPathError(
                f"{field}: no {kind} roots are configured, so no {kind} path is allowed", field=field, path=raw
            )
        if ".." in raw.split("/"):
            raise ForbiddenPathError(f"{field}: path may not contain '..' components: {raw}", field=field, path=raw)
        candidate = Path(raw)  # "~" is not expanded: a request names paths, not users' homes
        if not candidate.is_absolute():
            candidate = roots[0] / candidate
        try:
            real = Path(os.path.realpath(candidate))
        except (OSError, ValueError) as e:
            raise BadRequestError(f"{field}: cannot resolve {raw}: {e}", field=field) from None
        resolved_bytes = len(os.fsencode(real))
        if resolved_bytes > MAX_PATH_BYTES:  # a relative path joined to its root can outgrow PATH_MAX
            raise BadRequestError(
                f"{field}: path resolves to {resolved_bytes} bytes; the limit is {MAX_PATH_BYTES}",
                field=field,
                limit=MAX_PATH_BYTES,
            )
        for root in roots:
            if _inside(real, root):
                return real
        shown = ", ".join(str(r) for r in roots)
        raise ForbiddenPathError(
            f"{field}: {raw} resolves (symlinks followed) outside the {kind} roots ({shown})", field=field, path=raw
        )


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
