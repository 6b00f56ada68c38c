"""How far a load's reads have come, for whoever asks (the service's load jobs).

    with reporting_read_progress(lambda done, total: print(f"{done} of {total} bytes")):
        load_megatron_model(path)

Inside the block, the tensor records a load reads are counted as they land; ``listener(done,
total)`` is called from the reading threads, one call at a time and in order (at most about
once per 1 % of ``total``, and once at the end), so it must be quick; if it raises, the load
goes on without it (logged once). Outside such a block nothing is counted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator
from contextvars import ContextVar

__all__ = ["reporting_read_progress", "ReadProgress"]

logger = logging.getLogger(__name__)

Listener = Callable[[int, int], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("megaload_read_progress", default=None)


@contextlib.contextmanager
def reporting_read_progress(listener: Listener) -> Generator[None, None, None]:
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class ReadProgress:
    """The counter of one run of reads of ``total`` bytes (made in the caller's context)."""

    def __init__(self, total: int) -> None:
        self._listener = _LISTENER.get()
        self.total = total
        self._done = 0
        self._next = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        if self._listener is None:
            return
        # the listener is called under the lock: reports from several reading threads arrive in
        # order, and a failing listener is dropped before another thread can call it
        with self._lock:
            self._done += nbytes
            if self._listener is None or (self._done < self._next and self._done < self.total):
                return
            self._next = self._done + max(1, self.total // 100)
            try:
                self._listener(self._done, self.total)
            except Exception:  # a report that fails must not fail the load: stop reporting
                logger.warning("read progress listener failed; no more progress reported for this load", exc_info=True)
                self._listener = None
