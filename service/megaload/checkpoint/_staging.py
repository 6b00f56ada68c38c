"""Where a save writes before it publishes, and cleaning up after saves that died.

A save of ``parent/name`` writes into a fresh hidden sibling ``parent/.name.partial-<id>``
(``<id>``: 12 hex digits) and publishes it with one rename (an atomic exchange with the
previous checkpoint when overwriting). Beside the staging directory lies its *owner file*,
``parent/.name.partial-<id>.owner``, created before the directory and removed last; it
says who is saving (host, boot id, PID namespace, PID and the process's start time) and,
while a non-atomic overwrite is between its two renames, where the previous checkpoint
was moved. The owner file is what makes a directory recognisably ours: a
``.partial-`` directory without one is never touched.

Life cycle (:class:`Staging`)::

    staging = Staging.create(dest)   # owner file, then the directory; heartbeat starts
    ... write into staging.path ...
    staging.publish()                # rename/exchange into dest; previous checkpoint removed
    # or staging.discard()           # on failure: the directory removed
    # either way the owner file goes last and the heartbeat stops

A process killed at any point leaves at worst a staging directory, an owner file, and (in
the non-atomic overwrite) the previous checkpoint under ``.name.replaced-<id>``; the
destination holds the previous checkpoint or the complete new one, except between the two
renames of that fallback, which :func:`remove_stale_saves` repairs (the previous checkpoint
goes back). A save is *stale* when its owner is gone: on the same host, boot and PID
namespace, no live process has that PID and start time; elsewhere (another replica on shared
storage, a container restarted under another name), the owner file's heartbeat (its mtime,
refreshed every :data:`HEARTBEAT_SECONDS` while the save runs) is older than ``stale_after``.
Saves running in this process are never stale.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._errors import CheckpointError, CheckpointExistsError

__all__ = [
    "Staging",
    "remove_stale_saves",
    "fsync_dir",
    "check_destination",
    "HEARTBEAT_SECONDS",
    "STALE_AFTER_SECONDS",
]

logger = logging.getLogger(__name__)

PARTIAL_TAG = ".partial-"
REPLACED_TAG = ".replaced-"
OWNER_SUFFIX = ".owner"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0  # a foreign owner silent this long is taken for dead
_OWNER_RE = re.compile(r"^\.(?P<name>.+)\.partial-(?P<id>[0-9a-f]{12})\.owner$")
_MAX_OWNER_BYTES = 4096
_MAX_WALK_DEPTH = 32
_ACTIVE: set[str] = set()  # owner files of saves running in this process
_ACTIVE_LOCK = threading.Lock()


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return None


def _process_start(pid: int) -> int | None:
    """The start time (clock ticks after boot) of process ``pid``, or None if there is none."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if not line or ")" not in line:
        return None
    try:
        return int(line.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {
        "host": socket.gethostname(),
        "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
        "pid_ns": pid_ns,
        "pid": pid,
        "pid_start": _process_start(pid),
    }


def _owner_alive(owner: dict[str, Any], mtime: float, stale_after: float) -> bool:
    me = _identity()
    local = all(owner.get(k) == me[k] and me[k] is not None for k in ("host", "boot_id", "pid_ns"))
    if local and isinstance(owner.get("pid"), int) and owner.get("pid_start") is not None:
        return _process_start(owner["pid"]) == owner["pid_start"]
    return time.time() - mtime < stale_after


def _write_owner(path: Path, data: dict[str, Any], *, create: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if create else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Staging:
    """One save's staging directory and owner file (see the module docstring)."""

    def __init__(self, dest: Path, path: Path, owner: Path, record: dict[str, Any]) -> None:
        self.dest = dest
        self.path = path
        self.owner = owner
        self._record = record
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"save-heartbeat-{path.name}", daemon=True)

    @classmethod
    def create(cls, dest: Path) -> Staging:
        """Owner file, then the directory, beside ``dest``; the heartbeat starts."""
        tag = uuid.uuid4().hex[:12]
        path = dest.with_name(f".{dest.name}{PARTIAL_TAG}{tag}")
        owner = path.with_name(path.name + OWNER_SUFFIX)
        record = {"megaload_save": 1, "destination": dest.name, "replaced": None, **_identity()}
        _write_owner(owner, record, create=True)
        with _ACTIVE_LOCK:
            _ACTIVE.add(str(owner))
        try:
            path.mkdir()
        except BaseException:
            cls._forget(owner)
            raise
        staging = cls(dest, path, owner, record)
        staging._heartbeat.start()
        return staging

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.owner)

    @staticmethod
    def _forget(owner: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            owner.unlink()
        with _ACTIVE_LOCK:
            _ACTIVE.discard(str(owner))

    def _finish(self) -> None:
        self._stop.set()
        self._forget(self.owner)
        fsync_dir(self.dest.parent)

    def publish(self) -> None:
        """Move the finished staging directory to the destination. If that fails, the
        destination is left as it was and the staging directory removed."""
        path, dest = self.path, self.dest
        old = None
        try:
            if dest.exists() and any(dest.iterdir()):
                if _exchange(path, dest):
                    shutil.rmtree(path, ignore_errors=True)  # now holds the previous checkpoint
                    return
                old = dest.with_name(f".{dest.name}{REPLACED_TAG}{uuid.uuid4().hex[:12]}")
                self._record["replaced"] = old.name  # recorded before the first rename
                _write_owner(self.owner, self._record, create=False)
                os.rename(dest, old)
                os.rename(path, dest)
                shutil.rmtree(old, ignore_errors=True)
                return
            if dest.exists():
                dest.rmdir()
            os.rename(path, dest)
        except BaseException:
            if old is not None and old.exists() and not dest.exists():
                os.rename(old, dest)
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            self._finish()

    def discard(self) -> None:
        """Remove the staging directory (the destination is left as it was)."""
        try:
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._finish()


def _read_owner(owner: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(owner, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_OWNER_BYTES:
            return None
        try:
            data = json.loads(f.read(_MAX_OWNER_BYTES))
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(data, dict) or data.get("megaload_save") != 1:
        return None
    return data


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def _clean_one(owner: Path, match: re.Match[str], stale_after: float) -> list[Path]:
    """Remove what the dead save behind ``owner`` left (see the module docstring)."""
    with _ACTIVE_LOCK:
        if str(owner) in _ACTIVE:
            return []
    record = _read_owner(owner)
    if record is None or record.get("destination") != match["name"]:
        return []
    try:
        mtime = owner.lstat().st_mtime
    except OSError:
        return []
    if _owner_alive(record, mtime, stale_after):
        return []
    parent = owner.parent
    staging = parent / owner.name.removesuffix(OWNER_SUFFIX)
    dest = parent / match["name"]
    removed = []
    replaced = record.get("replaced")
    if isinstance(replaced, str) and re.fullmatch(re.escape(f".{match['name']}{REPLACED_TAG}") + r"[0-9a-f]{12}", replaced):
        old = parent / replaced
        if old.is_dir() and not old.is_symlink():
            if not dest.exists() and not dest.is_symlink():
                os.rename(old, dest)  # killed between the two renames: the previous checkpoint goes back
                logger.warning("restored the previous checkpoint %s from %s", dest, old)
            else:
                _remove_tree(old)
                removed.append(old)
    if staging.exists() or staging.is_symlink():
        _remove_tree(staging)
        removed.append(staging)
    owner.unlink()
    removed.append(owner)
    return removed


def _owners_in(directory: Path) -> Iterator[tuple[Path, re.Match[str]]]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = _OWNER_RE.match(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            yield Path(entry.path), match


def remove_stale_saves(
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    recursive: bool = False,
    stale_after: float = STALE_AFTER_SECONDS,
) -> list[Path]:
    """Remove what dead saves left in ``directory`` (staging directories, their owner files,
    displaced previous checkpoints) and only that; returns what was removed. ``name``: only
    saves to ``directory/name``. ``recursive``: also below ``directory`` (a save root), not
    descending into checkpoints, staging directories or symlinks."""
    removed: list[Path] = []
    top = Path(directory)
    pending = [(top, 0)]
    while pending:
        here, depth = pending.pop()
        for owner, match in _owners_in(here):
            if name is not None and match["name"] != name:
                continue
            try:
                removed.extend(_clean_one(owner, match, stale_after))
            except OSError as e:
                logger.warning("could not remove the leftovers of the save behind %s: %s", owner, e)
        if not recursive or depth >= _MAX_WALK_DEPTH:
            continue
        try:
            children = [e for e in os.scandir(here) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        if any(e.name.startswith("iter_") or e.name == "release" for e in children):
            continue  # a checkpoint: nothing of ours inside
        for child in children:
            if PARTIAL_TAG in child.name or REPLACED_TAG in child.name:
                continue
            pending.append((Path(child.path), depth + 1))
    for path in removed:
        logger.info("removed %s, left by a save that did not finish", path)
    return removed


def check_destination(
    path: Path, overwrite: bool, *, verb: str, replaceable: Callable[[Path], bool], refusal: str, taken: str
) -> None:
    """What a directory staged and renamed to ``path`` (a save, an export) must not replace: a
    parent that does not exist (CheckpointError), a file or symlink, a non-empty directory
    ``replaceable`` refuses (``refusal`` says why), or, without ``overwrite``, one it accepts
    (``taken`` says what is there): CheckpointExistsError. An unreadable directory raises the
    OSError."""
    if not path.exists() and not path.is_symlink():
        if not path.parent.is_dir():
            raise CheckpointError(f"cannot {verb} to {path}: parent directory {path.parent} does not exist", path=path)
        return
    if path.is_symlink() or not path.is_dir():
        raise CheckpointExistsError(f"cannot {verb} to {path}: it exists and is not a directory", path=path)
    if not any(path.iterdir()):
        return
    if not replaceable(path):
        raise CheckpointExistsError(f"cannot {verb} to {path}: {refusal}", path=path)
    if not overwrite:
        raise CheckpointExistsError(f"{taken}; pass overwrite=True to replace it", path=path)
