"""Shard bodies over the standard library, read straight into where they belong.

httpx (through httpcore and h11) receives 64 KiB at a time and copies each piece about three
times before the caller sees it; for shards of hundreds of MiB that copying is most of the
client's CPU time. :class:`DirectTransport` sends the same shard request (URL prefix, query,
token and other headers, ``Range``/``If-Range``) over an ``http.client`` connection and
reads the body with ``readinto`` into the sink's own memory: the shard buffer of
``state_dict``, each tensor's buffer for ``iter_tensors``, one bounded buffer for
``download``. Everything else is shared with the httpx path: the :class:`~._routes.Call`,
the retry decisions of :class:`~._base_client.BaseClient` (:mod:`._retry`), the one error
mapping (:func:`~._exceptions.make_status_error`), the resume bookkeeping (:mod:`._resume`).

Used only for plain ``http://`` base URLs with no credentials in them and no proxy set for
their host in the environment, and only when the client created its own httpx client;
otherwise shards go through httpx like every other request (see :func:`direct_transport_for`).
Socket errors are translated into the httpx exception classes the retry policy already
knows, so both paths retry, and fail, alike. One connection per attempt, closed when the body
ends: shards are few and large.

Call order (both clients)::

    transport = direct_transport_for(base_url, timeout)     # None: use httpx
    for n in receive_shard(client, transport, call, transfer, abort):
        progress(n)                                           # bytes that just landed
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import httpx

from ._exceptions import IntegrityError, make_status_error
from ._resume import ShardTransfer, TransferAborted
from ._routes import Call

if TYPE_CHECKING:
    from ._base_client import BaseClient

__all__ = ["DirectTransport", "direct_transport_for", "receive_shard"]

# Most of an error answer's body kept for its problem document.
_MAX_ERROR_BODY = 1 << 20
_TIMEOUT = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout, "read": httpx.ReadTimeout}
_FAILURE = {"connect": httpx.ConnectError, "write": httpx.WriteError, "read": httpx.ReadError}
# Framing headers that describe the wire, not the (already decoded) body we hand on.
_WIRE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})


def direct_transport_for(base_url: str, timeout: httpx.Timeout) -> DirectTransport | None:
    """The transport for ``base_url``, or ``None`` where only httpx can do it right.

    https (TLS settings live in httpx), credentials in the URL, and hosts an environment
    proxy applies to (httpx honours ``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``) stay on httpx.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.username is not None or parts.password is not None:
        return None
    try:
        host, port = parts.hostname, parts.port or 80
    except ValueError:  # a port that is not a number: let httpx report it
        return None
    if not host or _proxied(host):
        return None
    return DirectTransport(host, port, parts.path.rstrip("/"), timeout)


def _proxied(host: str) -> bool:
    import urllib.request

    proxies = urllib.request.getproxies()
    if not (proxies.get("http") or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


class DirectTransport:
    """One ``http.client`` connection per request to ``host:port``, paths under ``prefix``."""

    def __init__(self, host: str, port: int, prefix: str, timeout: httpx.Timeout) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"DirectTransport({self.host!r}, {self.port}, {self.prefix!r})"

    def target(self, call: Call[object]) -> str:
        query = urlencode(list(call.params))
        return self.prefix + call.path + (f"?{query}" if query else "")

    def request_for(self, call: Call[object]) -> httpx.Request:
        """An httpx request naming what was sent, for error messages and status mapping."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return httpx.Request(call.method, f"http://{netloc}:{self.port}{self.target(call)}")

    @contextmanager
    def exchange(
        self, call: Call[object], headers: dict[str, str], request: httpx.Request
    ) -> Iterator[http.client.HTTPResponse]:
        """Connect, send, read the status line and headers; the connection closes on exit."""
        timeout = self.timeout
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout.connect)
        try:
            with _translated("connect", request):
                connection.connect()
            connection.sock.settimeout(timeout.write)
            with _translated("write", request):
                connection.request(call.method, self.target(call), headers=headers)
            connection.sock.settimeout(timeout.read)
            with _translated("read", request):
                response = connection.getresponse()
            yield response
        finally:
            connection.close()


@contextmanager
def _translated(phase: str, request: httpx.Request) -> Iterator[None]:
    """Socket and ``http.client`` failures as the httpx exceptions :mod:`._retry` knows."""
    try:
        yield
    except TimeoutError as exc:  # socket.timeout
        raise _TIMEOUT[phase](str(exc) or "timed out", request=request) from exc
    except http.client.HTTPException as exc:  # bad status line, closed before answering, ...
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request) from exc
    except OSError as exc:
        raise _FAILURE[phase](str(exc) or type(exc).__name__, request=request) from exc


def _status_response(
    answer: http.client.HTTPResponse, request: httpx.Request, *, with_body: bool
) -> httpx.Response:
    """An error answer as an ``httpx.Response``, for the shared retry and error decisions."""
    headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in _WIRE_HEADERS]
    body = b""
    if with_body:
        with _translated("read", request):
            body = answer.read(_MAX_ERROR_BODY)
    return httpx.Response(answer.status, headers=headers, content=body, request=request)


def receive_shard(
    client: BaseClient,
    transport: DirectTransport,
    call: Call[None],
    transfer: ShardTransfer,
    abort: threading.Event | None = None,
) -> Iterator[int]:
    """Receive one shard into ``transfer``, resuming after breaks; yields each read's size.

    The same loop as the clients' httpx ``_stream_shard``: retries (and their budget reset
    after real progress) are decided by ``client``, waits end early when ``abort`` is set,
    and ``abort`` stops the transfer with :class:`~._resume.TransferAborted`.
    """
    retries = 0
    request = transport.request_for(call)
    while not transfer.complete:
        _stop_if(abort)
        offset_before = transfer.offset
        try:
            with transport.exchange(call, client._shard_headers(transfer), request) as answer:
                delay = None
                if answer.status >= 400:
                    delay = client._delay_after_status(call, _status_response(answer, request, with_body=False), retries)
                    if delay is None:
                        raise make_status_error(_status_response(answer, request, with_body=True))
                else:
                    transfer.begin(answer.status, answer.headers)
                    read = _reader(answer, request)
                    while not transfer.complete:
                        _stop_if(abort)
                        n = transfer.receive(read)
                        if not n:
                            if answer.length == 0:  # the answer is complete, the shard is not
                                raise IntegrityError(
                                    f"{transfer.where}: the answer ended after {transfer.offset} of "
                                    f"{transfer.expected_size} bytes"
                                )
                            raise httpx.RemoteProtocolError(
                                "peer closed connection without sending complete message body", request=request
                            )
                        yield n
                    break
        except httpx.TransportError as exc:
            retries = client._retries_after_break(retries, transfer, offset_before)
            delay = client._delay_after_error(call, exc, retries)
        if abort is not None:
            abort.wait(delay)  # an abort ends the wait; the next turn raises
        else:
            time.sleep(delay)
        retries += 1
    transfer.finish()


def _reader(answer: http.client.HTTPResponse, request: httpx.Request):
    def readinto(buffer: memoryview) -> int:
        with _translated("read", request):
            return answer.readinto(buffer)

    return readinto


def _stop_if(abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise TransferAborted
