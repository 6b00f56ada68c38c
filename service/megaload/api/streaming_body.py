"""A streamed response body that holds a registry lease until the last byte or the client leaves.

:class:`LeasedStreamingResponse` sends the pieces of a sync iterator (the shard writer's
``iter_shard_bytes``), each ``next()`` run in a worker thread as Starlette's
``StreamingResponse`` does, so the event loop never reads tensor memory. Life cycle::

    lease = registry.acquire(model_id)          # in the handler
    pieces = iter_shard_bytes(plan, n, entry.state_dict, start=..., end=...)
    return LeasedStreamingResponse(pieces, lease, headers=...)
        # __call__ sends; in its finally, whatever ended it (last piece sent, the client
        # disconnected, a send failed, the server cancelled the request) it closes the
        # iterator, which drops its tensor references, then releases the lease

Starlette does not close a sync iterator it stops consuming; this class does. A piece is
never being produced when ``close`` runs: a ``next()`` running in a worker thread is waited
for even when the request is cancelled (``anyio.to_thread.run_sync`` does not abandon it).
Call :meth:`close` yourself only when the response will never be sent.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from ..registry import Lease

__all__ = ["LeasedStreamingResponse"]


class LeasedStreamingResponse(StreamingResponse):
    """``StreamingResponse`` over ``pieces`` that closes them and releases ``lease`` when done.

    ``on_bytes(n)`` is called (from a worker thread) with the size of each piece produced.
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
    ) -> None:
        self._pieces = pieces
        self._lease = lease
        self._counted = _counted(pieces, on_bytes)
        super().__init__(self._counted, status_code=status_code, headers=headers, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
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


def _counted(pieces: Iterator[memoryview], on_bytes: Callable[[int], None] | None) -> Generator[memoryview, None, None]:
    for piece in pieces:
        if on_bytes is not None:
            on_bytes(len(piece))
        yield piece
