"""One thread that runs submitted commands strictly in order, each answered on its future.

The worker knows nothing of what a command does: it is handed ``run(command)`` and, while
no command is queued, ``idle()`` every ``idle_seconds()`` seconds (``None``: never)::

    worker = Worker(run, idle=ping, idle_seconds=lambda: 5.0)
    worker.start(first_command)          # the thread's first command (e.g. start-up)
    fut = worker.submit(command)         # EngineStoppedError once closed
    worker.close(last_command, grace)    # cancels queued commands, waits for the running one

``close`` cancels every queued command (their futures say so), queues ``last_command`` and
waits up to ``grace`` seconds for the thread to finish it; it returns False when a command
was still running then (the thread is a daemon, so it does not hold the process).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..errors import EngineStoppedError

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _Item:
    command: Any
    future: concurrent.futures.Future
    on_start: Callable[[], None] | None
    around: Callable[[], AbstractContextManager[Any]] | None = None


class Worker:
    """See the module docstring."""

    def __init__(
        self,
        run: Callable[[Any], Any],
        *,
        idle: Callable[[], None] | None = None,
        idle_seconds: Callable[[], float | None] = lambda: None,
        name: str = "megaload-engine",
    ) -> None:
        self._run = run
        self._idle = idle
        self._idle_seconds = idle_seconds
        self._name = name
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.running: Any = None  # the command being run, for logs and /v1/info

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self, first: Any) -> concurrent.futures.Future:
        """Start the thread; ``first`` is its first command."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        fut = self.submit(first)
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()
        return fut

    def submit(
        self,
        command: Any,
        on_start: Callable[[], None] | None = None,
        around: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> concurrent.futures.Future:
        """Queue ``command``; ``on_start`` runs on the worker thread when it is picked up, and
        the command runs inside the context manager ``around()`` makes, if given."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise EngineStoppedError()
            self._queue.put(_Item(command, fut, on_start, around))
        return fut

    def close(self, last: Any, grace_seconds: float) -> bool:
        """Blocking: cancel queued commands, run ``last``, wait up to ``grace_seconds``.
        Returns False if the thread was still busy then. Idempotent."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            cancelled = self._drain()
            if self._thread is not None:
                self._queue.put(_Item(last, concurrent.futures.Future(), None))
                self._queue.put(_STOP)
        if cancelled:
            logger.info("engine shutdown: cancelled %d queued command(s)", cancelled)
        if self._thread is None:
            return True
        self._thread.join(grace_seconds)
        if self._thread.is_alive():
            logger.warning(
                "engine shutdown: command %r still running after %.0fs; abandoning it",
                getattr(self.running, "name", self.running),
                grace_seconds,
            )
            return False
        return True

    def _drain(self) -> int:
        cancelled = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return cancelled
            if item is not _STOP and item.future.cancel():
                cancelled += 1

    def _loop(self) -> None:
        _lower_thread_priority()
        while True:
            try:
                item = self._queue.get(timeout=self._idle_seconds())
            except queue.Empty:
                if self._idle is not None:
                    self._idle()
                continue
            if item is _STOP:
                return
            if not item.future.set_running_or_notify_cancel():
                continue
            self.running = item.command
            try:
                if item.on_start is not None:
                    item.on_start()
                with item.around() if item.around is not None else contextlib.nullcontext():
                    result = self._run(item.command)
            except Exception as e:
                item.future.set_exception(e)
            except BaseException as e:  # torch DCP's CheckpointException derives from BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    item.future.set_exception(e)
                    raise
                wrapped = RuntimeError(f"{type(e).__name__}: {e}")
                wrapped.__cause__ = e
                item.future.set_exception(wrapped)
            else:
                item.future.set_result(result)
            finally:
                self.running = None


def _lower_thread_priority() -> None:
    """Make the worker the thread that waits when the process is busy: heavy commands keep a
    core busy for seconds, and the event loop must still answer ``/healthz`` at once. Linux
    schedules threads individually, so ``setpriority`` on the thread id affects only this one
    (the GIL switch interval, process-wide, is set once at start-up: :mod:`._process`)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError, PermissionError):  # not Linux, or not allowed: keep going
        logger.debug("could not lower the engine thread's priority")
