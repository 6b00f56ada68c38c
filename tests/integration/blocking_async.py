"""The real :class:`megaload_client.AsyncClient`, driven from blocking test code.

``with BlockingAsyncClient(url, **options) as client:`` reads like ``with mc.Client(url,
**options) as client:``: every coroutine the async client (or one of its handles) returns
runs on an event loop of its own in a thread, and its result or exception comes back here;
an async stream (``iter_tensors``) comes back as a generator (its index fetched at once, as
the sync client does), closed with ``aclose`` when the generator is. So one test body runs
the same calls over both clients (see the ``make_client`` fixture of test_client_transport).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import megaload_client as mc

__all__ = ["BlockingAsyncClient"]


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="async-client-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Any) -> Any:
        async def wait() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Blocking:
    """Any object of the async SDK, its awaitables run to their result."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(attribute(*args, **kwargs))

        return call

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, mc.TensorStream):
            return self._iterate(self._loop.run(value))  # the index now, errors here
        if inspect.isawaitable(value):
            value = self._loop.run(value)
        if isinstance(value, (mc.AsyncModelHandle, mc.AsyncJobHandle)):
            return _Blocking(value, self._loop)
        return value

    def _iterate(self, stream: mc.TensorStream) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._loop.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(stream.aclose())


class BlockingAsyncClient(_Blocking):
    """``mc.AsyncClient(*args, **kwargs)`` behind blocking calls; a context manager."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loop = _Loop()
        try:
            client = loop.run(_make(*args, **kwargs))
        except BaseException:
            loop.stop()
            raise
        super().__init__(client, loop)

    def __enter__(self) -> BlockingAsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._loop.run(self._target.close())
        finally:
            self._loop.stop()


async def _make(*args: Any, **kwargs: Any) -> mc.AsyncClient:
    return mc.AsyncClient(*args, **kwargs)
