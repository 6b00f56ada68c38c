"""A streamed response body that holds a registry lease until the last byte, the client
leaves, or the client stops taking data for the idle timeout.

:class:`LeasedStreamingResponse` sends the pieces of a sync iterator (the shard writer's
``iter_shard_bytes``), each ``next()`` run in a worker thread as Starlette's
``StreamingResponse`` does, so the event loop never reads tensor memory. Life cycle::

    lease = registry.acquire(model_id)          # in the handler
    pieces = iter_shard_bytes(plan, n, entry.state_dict, start=..., end=...)
    return LeasedStreamingResponse(pieces, lease, headers=...)
        # __call__ sends; in its finally, whatever ended it (last piece sent, the client
        # disconnected, a send failed, the server cancelled the request, the stream stalled)
        # it closes the iterator, which drops its tensor references, then releases the lease

A stream **stalls** when a piece cannot be handed to the connection because the client
takes no data: the bytes it has not taken yet (the connection's write buffer and socket
send queue) do not decrease for ``idle_timeout`` seconds
(the ``stream_idle_timeout_seconds`` setting when not given). A reader that is merely slow
keeps its stream as long as its buffer keeps draining. A stalled stream releases its lease
at once (so an eviction waiting for it completes and loads waiting for the memory proceed)
and its connection is aborted, dropping what the connection still buffers (views of tensor
memory); see :mod:`megaload.server` for the ``megaload.connection`` extension that allows
it. Under a server without that extension, each piece gets ``idle_timeout`` to be sent and
the response then fails, so the server closes the connection itself.

A ``HEAD`` that the request middleware runs as this ``GET`` (scope extension
``megaload.head``) gets the headers and no piece is produced.

Starlette does not close a sync iterator it stops consuming; this class does. A piece is
never being produced when ``close`` runs: a ``next()`` running in a worker thread is waited
for even when the request is cancelled (``anyio.to_thread.run_sync`` does not abandon it).
Call :meth:`close` yourself only when the response will never be sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ..server import CONNECTION_EXTENSION, HEAD_EXTENSION

if TYPE_CHECKING:
    from ..registry import Lease
    from ..runtime import Runtime

__all__ = ["LeasedStreamingResponse", "leased_stream", "StreamStalled", "DEFAULT_IDLE_TIMEOUT"]

logger = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 30.0


class StreamStalled(Exception):
    """The client took no data for the idle timeout."""


class LeasedStreamingResponse(StreamingResponse):
    """``StreamingResponse`` over ``pieces`` that closes them and releases ``lease`` when done.

    ``on_bytes(n)`` is called (from a worker thread) with the size of each piece produced;
    ``on_stalled()`` (on the event loop) when the stream stalls. ``idle_timeout``: seconds
    without progress before the stream is dropped (default: the app's
    ``stream_idle_timeout_seconds``, else :data:`DEFAULT_IDLE_TIMEOUT`).
    """

    def __init__(
        self,
        pieces: Iterator[memoryview],
        lease: Lease,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_stalled: Callable[[], None] | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self._pieces = pieces
        self._lease = lease
        self._counted = _counted(pieces, on_bytes)
        self._on_stalled = on_stalled
        self._idle_timeout = idle_timeout
        super().__init__(self._counted, status_code=status_code, headers=headers, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if HEAD_EXTENSION in (scope.get("extensions") or {}):  # a HEAD run as this GET: headers only
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                self.close()
            return
        idle = self._idle_timeout if self._idle_timeout is not None else _configured_idle_timeout(scope)
        connection = (scope.get("extensions") or {}).get(CONNECTION_EXTENSION)
        try:
            await super().__call__(scope, receive, _watched(send, idle, connection))
        except BaseException as exc:
            if not _is_stall(exc):
                raise
            self.close()  # the lease first: nothing of this stream is needed any more
            if self._on_stalled is not None:
                self._on_stalled()
            logger.warning(
                "%s %s: the client took no data for %.1f s; stream dropped, lease released",
                scope.get("method"), scope.get("path"), idle,
            )
            if connection is None:
                raise StreamStalled(f"no progress for {idle} s") from None  # the server closes the connection
            connection.abort()
        finally:
            self.close()

    def close(self) -> None:
        """Close the piece iterator and release the lease. Idempotent; event loop thread."""
        try:
            self._counted.close()
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        finally:
            self._lease.release()


def _configured_idle_timeout(scope: Scope) -> float:
    settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
    value = getattr(settings, "stream_idle_timeout_seconds", None)
    return float(value) if value is not None else DEFAULT_IDLE_TIMEOUT


def _is_stall(exc: BaseException) -> bool:
    if isinstance(exc, StreamStalled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_stall(e) for e in exc.exceptions)
    return False


def _watched(send: Send, idle: float, connection: Any) -> Send:
    """``send`` that raises :class:`StreamStalled` when a body message waits ``idle`` seconds
    while the client takes none of what was sent (with no connection extension: when it
    waits ``idle`` seconds)."""
    poll = min(1.0, idle / 4)

    async def send_watched(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        scope = anyio.CancelScope(deadline=anyio.current_time() + idle)
        timer: asyncio.TimerHandle | None = None
        if connection is not None:
            loop = asyncio.get_running_loop()
            last = [connection.unsent_bytes()]

            def check() -> None:
                nonlocal timer
                size = connection.unsent_bytes()
                if size < last[0]:  # the client took data: progress
                    scope.deadline = anyio.current_time() + idle
                last[0] = size
                timer = loop.call_later(poll, check)

            timer = loop.call_later(poll, check)
        try:
            with scope:
                await send(message)
        finally:
            if timer is not None:
                timer.cancel()
        if scope.cancelled_caught:
            raise StreamStalled(f"no progress for {idle} s")

    return send_watched


def _counted(pieces: Iterator[memoryview], on_bytes: Callable[[int], None] | None) -> Generator[memoryview, None, None]:
    for piece in pieces:
        if on_bytes is not None:
            on_bytes(len(piece))
        yield piece


def leased_stream(
    runtime: Runtime,
    pieces: Iterator[memoryview],
    lease: Lease,
    *,
    status_code: int,
    headers: Mapping[str, str],
    media_type: str,
    count_stalls: bool,
) -> LeasedStreamingResponse:
    """A :class:`LeasedStreamingResponse` counted in the runtime's metrics (bytes streamed,
    and stalls with ``count_stalls``) under the runtime's idle timeout."""
    return LeasedStreamingResponse(
        pieces,
        lease,
        status_code=status_code,
        headers=headers,
        media_type=media_type,
        on_bytes=runtime.metrics.stream_bytes.inc,
        on_stalled=runtime.metrics.streams_stalled.inc if count_stalls else None,
        idle_timeout=runtime.settings.stream_idle_timeout_seconds,
    )
