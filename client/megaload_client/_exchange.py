"""Every exchange with the service, written once, free of I/O: generators of steps.

An exchange (one API call with its retries, one shard body with its resumption, a shard's
header probe, the readiness poll, a job's wait) is a generator that yields what it needs
done and is sent what came of it. A driver performs the steps: :class:`~._drivers.SyncDriver`
and :class:`~._drivers.AsyncDriver` over httpx, :class:`~._direct_transport.DirectDriver`
over the standard library. So the sync and async clients, and both transports, run the same
decisions; only the waiting differs. The steps::

    response = yield Send(call, headers, stream)   # a transport error is thrown in here
    response = yield Read(response)                # the whole body (error answers)
    n        = yield Pull(receiver)                # the next body bytes into receiver; 0: end
    yield Close(response)
    yield Sleep(seconds, abort)                    # abort (a threading.Event) ends it early
    yield Progress(n)                              # n bytes landed: the driver reports them

``receiver`` is a :class:`~._resume.ShardTransfer` (``write(chunk)`` takes bytes httpx
received, ``receive(readinto)`` lets the direct reader fill its memory) or a :class:`Prefix`.
An exchange returns its result (``StopIteration.value``); drivers hand it back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _routes as routes
from ._destinations import header_from_prefix, header_probe
from ._exceptions import APIConnectionError, IntegrityError, ReadyTimeoutError, make_status_error
from ._resume import ShardTransfer, TransferAborted
from ._retry import Attempts, RetryPolicy
from ._routes import Call
from ._safetensors import SafetensorsHeader
from .types import Readiness, ShardInfo

if TYPE_CHECKING:
    from ._base_client import BaseClient

__all__ = [
    "Send", "Read", "Pull", "Close", "Sleep", "Progress", "Step", "Exchange", "Prefix",
    "request", "shard_body", "shard_header", "wait_ready", "Deadline",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    call: Call[Any]
    headers: dict[str, str] | None = None  # replace the client's for these names
    stream: bool = False


@dataclass(frozen=True)
class Read:
    response: httpx.Response


@dataclass(frozen=True)
class Pull:
    receiver: Any  # ShardTransfer | Prefix


@dataclass(frozen=True)
class Close:
    response: httpx.Response


@dataclass(frozen=True)
class Sleep:
    seconds: float
    abort: threading.Event | None = None


@dataclass(frozen=True)
class Progress:
    n: int


Step = Send | Read | Pull | Close | Sleep | Progress
Exchange = Generator[Step, Any, T]

_BODY_ACCEPT = "application/octet-stream, application/problem+json"


def request(client: BaseClient, call: Call[T], policy: RetryPolicy | None = None) -> Exchange[T]:
    """One call and its retries; returns the parsed answer or raises the typed error."""
    attempts = Attempts(policy or client.retry_policy, call)
    while True:
        try:
            response = yield Send(call)
        except httpx.TransportError as exc:
            delay = attempts.after_error(exc)
        else:
            retry = attempts.after_status(response)
            if retry is None:
                return client._result(call, response)
            delay = retry
            yield Close(response)
        yield Sleep(delay)
        attempts.next()


def _final_answer(attempts: Attempts, response: httpx.Response) -> Exchange[float | None]:
    """``None`` when ``response`` starts the body to read; a delay before retrying; raises
    the typed error of a final error answer (its body read first)."""
    delay = attempts.after_status(response)
    if delay is None and response.status_code >= 400:
        raise make_status_error((yield Read(response)))
    return delay


def shard_body(
    client: BaseClient, call: Call[None], transfer: ShardTransfer, abort: threading.Event | None = None
) -> Exchange[None]:
    """Receive one shard into ``transfer``, resuming after breaks (``Range``/``If-Range``).

    Yields :class:`Progress` for every piece that lands; ``abort`` stops it with
    :class:`~._resume.TransferAborted` (between pieces, and during waits)."""
    attempts = Attempts(client.retry_policy, call)
    while not transfer.complete:
        _stop_if(abort)
        offset_before = transfer.offset
        try:
            response = yield Send(call, client._shard_headers(transfer), stream=True)
            delay = yield from _final_answer(attempts, response)
            if delay is None:
                transfer.begin(response.status_code, response.headers)
                while n := (yield Pull(transfer)):
                    yield Progress(n)
                    _stop_if(abort)
                if not transfer.complete:
                    raise IntegrityError(
                        f"{transfer.where}: the answer ended after {transfer.offset} of {transfer.expected_size} bytes"
                    )
            yield Close(response)
        except httpx.TransportError as exc:
            delay = attempts.after_error(exc, progressed=transfer.offset - offset_before)
        if delay is not None:
            yield Sleep(delay, abort)
            attempts.next()
    transfer.finish()


class Prefix:
    """A receiver that keeps the first ``size`` bytes of a body and ignores the rest (for
    httpx drivers, which hand over chunks: the header probes go over httpx, as before)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.size

    def write(self, chunk: bytes | memoryview) -> None:
        self.data += chunk[: self.size - len(self.data)]



def _prefix(client: BaseClient, call: Call[None], size: int) -> Exchange[bytes]:
    """The first ``size`` bytes of a shard (its stream closed once they are in)."""
    attempts = Attempts(client.retry_policy, call)
    headers = {"Accept": _BODY_ACCEPT, "Accept-Encoding": "identity", "Range": f"bytes=0-{size - 1}"}
    while True:
        try:
            response = yield Send(call, headers, stream=True)
            delay = yield from _final_answer(attempts, response)
            if delay is None:
                prefix = Prefix(size)
                while not prefix.complete and (yield Pull(prefix)):
                    pass
                yield Close(response)
                return bytes(prefix.data)
            yield Close(response)
        except httpx.TransportError as exc:
            delay = attempts.after_error(exc)
        yield Sleep(delay)
        attempts.next()


def shard_header(client: BaseClient, call: Call[None], shard: ShardInfo) -> Exchange[SafetensorsHeader]:
    """A shard's safetensors header, from ``Range`` requests read only as far as it goes."""
    need = header_probe(shard)
    while True:
        header = header_from_prefix((yield from _prefix(client, call, need)), shard)
        if not isinstance(header, int):
            return header
        need = header


class Deadline:
    """``timeout`` seconds from now (``None``: never)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float:
        return float("inf") if self._end is None else max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end


_ONE_TRY = RetryPolicy(max_retries=0)


def wait_ready(client: BaseClient, timeout: float | None, poll_interval: float) -> Exchange[Readiness]:
    """Poll ``/readyz`` until it says ready, through refused connections, connect timeouts
    and 503s alike, until ``timeout`` is spent: then :class:`ReadyTimeoutError`."""
    deadline = Deadline(timeout)
    while True:
        call = routes.ready()
        if timeout is not None:  # no single poll outlasts the wait
            call = replace(call, timeout=_capped(client.timeout, max(deadline.remaining(), 0.05)))
        try:
            state: Readiness | None = yield from request(client, call, _ONE_TRY)
            reason = state.detail if state is not None else None
        except APIConnectionError as exc:
            state, reason = None, str(exc)
        if state is not None and state.status == "ready":
            return state
        if deadline.expired:
            raise ReadyTimeoutError(
                f"service at {client.base_url} not ready after {timeout}s: "
                f"{reason or (state.status if state is not None else 'no answer')}",
                state,
            )
        yield Sleep(min(poll_interval, deadline.remaining()))


def _capped(timeout: httpx.Timeout, most: float) -> httpx.Timeout:
    def cap(value: float | None) -> float:
        return most if value is None else min(value, most)

    return httpx.Timeout(connect=cap(timeout.connect), read=cap(timeout.read), write=cap(timeout.write), pool=cap(timeout.pool))


def _stop_if(abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise TransferAborted
