"""Drivers: what performs the steps of an exchange (:mod:`._exchange`), and worker pools.

:class:`SyncDriver` sends over an ``httpx.Client`` and sleeps; :class:`AsyncDriver` over an
``httpx.AsyncClient`` and awaits; :class:`~._direct_transport.DirectDriver` over the
standard library, reading bodies straight into their destination. Each keeps the state of
one exchange (its open response) in a :class:`Run`, so one driver serves many threads or
tasks at once, and closes whatever is still open when the exchange ends, fails or is
abandoned. ``run(exchange)`` returns the exchange's result; ``stream(exchange)`` yields the
size of every piece that lands.

:func:`map_threads` and :func:`map_tasks` run one function over the shards of a call, at most
``max_workers`` at a time; the first failure stops the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._exchange import Close, Exchange, Progress, Pull, Read, Send, Sleep, Step

if TYPE_CHECKING:
    from ._base_client import BaseClient

__all__ = ["Run", "SyncDriver", "AsyncDriver", "map_threads", "map_tasks", "worker_count"]

T = TypeVar("T")
R = TypeVar("R")


class Run:
    """One exchange being driven: its generator, what to send it next, its open response."""

    def __init__(self, exchange: Exchange[Any]) -> None:
        self.exchange = exchange
        self.value: Any = None
        self.response: Any = None
        self.body: Any = None  # the open response's body iterator (httpx) or answer (direct)
        self._reply: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[Step]:
        """The steps, each sent what the driver made of the one before."""
        while True:
            try:
                if self._error is not None:
                    error, self._error = self._error, None
                    step = self.exchange.throw(error)
                else:
                    step = self.exchange.send(self._reply)
            except StopIteration as stop:
                self.value = stop.value
                return
            self._reply = None
            yield step

    def settle(self, perform: Callable[[Step, Run], Any], step: Step) -> None:
        try:
            self._reply = perform(step, self)
        except Exception as exc:  # handed to the exchange, which decides
            self._error = exc

    async def asettle(self, perform: Callable[[Step, Run], Awaitable[Any]], step: Step) -> None:
        try:
            self._reply = await perform(step, self)
        except Exception as exc:
            self._error = exc


class SyncDriver:
    """Performs exchanges over ``http`` for ``client`` (thread-safe)."""

    def __init__(self, client: BaseClient, http: httpx.Client) -> None:
        self.client = client
        self.http = http

    def run(self, exchange: Exchange[T]) -> T:
        pieces = self.stream(exchange)
        while True:
            try:
                next(pieces)
            except StopIteration as stop:
                return stop.value

    def stream(self, exchange: Exchange[T]) -> Generator[int, None, T]:
        run = Run(exchange)
        try:
            for step in run:
                if isinstance(step, Progress):
                    yield step.n
                else:
                    run.settle(self.perform, step)
        finally:
            self.close(run)
            exchange.close()
        return run.value

    def perform(self, step: Step, run: Run) -> Any:
        if isinstance(step, Send):
            return self.send(step, run)
        if isinstance(step, Pull):
            return self.pull(step, run)
        if isinstance(step, Read):
            return self.read(step, run)
        if isinstance(step, Close):
            self.close(run)
        elif isinstance(step, Sleep):
            if step.abort is not None:
                step.abort.wait(step.seconds)  # an abort ends the wait; the exchange then stops
            else:
                time.sleep(step.seconds)
        return None

    def send(self, step: Send, run: Run) -> httpx.Response:
        request = self.client._build_request(self.http, step.call)
        request.headers.update(step.headers or {})
        run.response, run.body = self.http.send(request, stream=step.stream), None
        return run.response

    def pull(self, step: Pull, run: Run) -> int:
        run.body = run.body or run.response.iter_raw()
        chunk = next(run.body, b"")
        if chunk:
            step.receiver.write(chunk)
        return len(chunk)

    def read(self, step: Read, run: Run) -> httpx.Response:
        step.response.read()
        return step.response

    def close(self, run: Run) -> None:
        if run.response is not None:
            response, run.response, run.body = run.response, None, None
            response.close()


class AsyncDriver:
    """Performs exchanges over ``http`` for ``client``, awaiting."""

    def __init__(self, client: BaseClient, http: httpx.AsyncClient) -> None:
        self.client = client
        self.http = http

    async def run(self, exchange: Exchange[T]) -> T:
        run = Run(exchange)
        async for _ in self._steps(run):
            pass
        return run.value

    def stream(self, exchange: Exchange[Any]) -> AsyncIterator[int]:
        return self._steps(Run(exchange))

    async def _steps(self, run: Run) -> AsyncIterator[int]:
        try:
            for step in run:
                if isinstance(step, Progress):
                    yield step.n
                else:
                    await run.asettle(self.perform, step)
        finally:
            await self.close(run)
            run.exchange.close()

    async def perform(self, step: Step, run: Run) -> Any:
        if isinstance(step, Send):
            request = self.client._build_request(self.http, step.call)
            request.headers.update(step.headers or {})
            run.response, run.body = await self.http.send(request, stream=step.stream), None
            return run.response
        if isinstance(step, Pull):
            run.body = run.body or run.response.aiter_raw()
            chunk = await anext(run.body, b"")
            if chunk:
                step.receiver.write(chunk)
            return len(chunk)
        if isinstance(step, Read):
            await step.response.aread()
            return step.response
        if isinstance(step, Close):
            await self.close(run)
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        return None

    async def close(self, run: Run) -> None:
        if run.response is not None:
            response, run.response, run.body = run.response, None, None
            await response.aclose()


def worker_count(max_workers: int, items: int) -> int:
    if not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
    return max(1, min(max_workers, items))


def map_threads(fn: Callable[[T, threading.Event], R], items: Sequence[T], max_workers: int) -> list[R]:
    """``fn`` over ``items`` on worker threads; the first failure sets the abort event the
    others watch, and is raised."""
    if not items:
        return []
    abort = threading.Event()
    with ThreadPoolExecutor(max_workers=worker_count(max_workers, len(items))) as pool:
        futures = [pool.submit(fn, item, abort) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # a failure, or an interrupt while waiting: stop the rest
            failed = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed or not all(f.done() for f in futures):
                abort.set()
                for future in futures:
                    future.cancel()
        if failed and failed[0] is not None:
            raise failed[0]
        return [future.result() for future in futures]


async def map_tasks(fn: Callable[[T], Awaitable[R]], items: Sequence[T], max_workers: int) -> list[R]:
    """``fn`` over ``items`` as tasks, at most ``max_workers`` at once; the first failure
    cancels the rest, and is raised."""
    if not items:
        return []
    gate = asyncio.Semaphore(worker_count(max_workers, len(items)))

    async def gated(item: T) -> R:
        async with gate:
            return await fn(item)

    tasks = [asyncio.ensure_future(gated(item)) for item in items]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # cancelled from outside
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            raise error
    return [task.result() for task in tasks]
