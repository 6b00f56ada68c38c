"""Getting a downloaded file's bytes to disk while the rest is still arriving.

A download is only complete once its file is ``fsync``'d (it is renamed into place after
that). Left alone, Linux starts writing the dirty pages back only when its thresholds are
reached, so most of a shard is written out during that final ``fsync``, after the last byte
has arrived. :class:`Writeback` asks the kernel to start writing each finished stretch of
the file (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait) so that the disk
works while the network does. On the bench VM, writing 1.1 GiB from memory then ``fsync``
took 0.75-0.85 s without it and 0.52-0.58 s with it (best of 3 runs each).

It changes no guarantee: the final ``fsync`` still decides durability. Where the call does
not exist (not Linux) or fails, nothing happens and the file is written as before.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

__all__ = ["WRITEBACK_BYTES", "Writeback"]

# How much of the file accumulates before its writeback is started.
WRITEBACK_BYTES = 8 << 20

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h
_sync_file_range: Any = None  # resolved on first use; False where unavailable


def _resolve():
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                function = ctypes.CDLL(None, use_errno=True).sync_file_range
            except (OSError, AttributeError):  # a libc without it
                pass
            else:
                function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                function.restype = ctypes.c_int
                _sync_file_range = function
    return _sync_file_range


class Writeback:
    """Starts writeback of ``fd`` every :data:`WRITEBACK_BYTES` of file growth.

    ``written(end)`` says the file now holds bytes up to offset ``end``; ``reset()`` after
    the file was truncated to zero.
    """

    def __init__(self, fd: int, start: int = 0, every: int = WRITEBACK_BYTES) -> None:
        self._fd = fd
        self._started = start  # writeback asked for everything before this offset
        self._every = every
        self._enabled = True

    def written(self, end: int) -> None:
        if not self._enabled or end - self._started < self._every:
            return
        function = _resolve()
        if not function or function(self._fd, self._started, end - self._started, _SYNC_FILE_RANGE_WRITE) != 0:
            self._enabled = False  # unsupported here (or by this file system): leave it to fsync
            return
        self._started = end

    def reset(self) -> None:
        self._started = 0
