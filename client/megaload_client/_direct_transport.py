"""Shard bodies over the standard library, read straight into where they belong.

httpx (through httpcore and h11) receives 64 KiB at a time and copies each piece about three
times before the caller sees it; for shards of hundreds of MiB that copying is most of the
client's CPU time. :class:`DirectTransport` sends the same shard request (URL prefix, query,
token and other headers, ``Range``/``If-Range``) over an ``http.client`` connection and
reads the body with ``readinto`` into the sink's own memory: the shard buffer of
``state_dict``, each tensor's buffer for ``iter_tensors``, one bounded buffer for
``download``. Everything else is shared with the httpx path: the :class:`~._routes.Call`,
the retry decisions (:mod:`._retry`), the one error
mapping (:func:`~._exceptions.make_status_error`), the resume bookkeeping (:mod:`._resume`).

Used only for plain ``http://`` base URLs with no credentials in them and no proxy set for
their host in the environment, and only when the client created its own httpx client;
otherwise shards go through httpx like every other request (see :func:`direct_transport_for`).
Socket errors are translated into the httpx exception classes the retry policy already
knows, so both paths retry, and fail, alike. One connection per attempt, closed when the body
ends: shards are few and large.

It drives the same exchanges as httpx does (:mod:`._exchange`)::

    driver = direct_driver_for(client)                     # None: use httpx
    for n in driver.stream(shard_body(client, call, transfer, abort)):
        progress(n)                                        # bytes that just landed
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import httpx

from ._drivers import Run, SyncDriver
from ._exchange import Pull, Read, Send
from ._routes import Call

if TYPE_CHECKING:
    from ._base_client import BaseClient

__all__ = ["DirectTransport", "DirectDriver", "direct_driver_for", "direct_transport_for"]
# Most of an error answer's body kept for its problem document.
_MAX_ERROR_BODY = 1 << 20
_TIMEOUT = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout, "read": httpx.ReadTimeout}
_FAILURE = {"connect": httpx.ConnectError, "write": httpx.WriteError, "read": httpx.ReadError}
# Framing headers that describe the wire, not the (already decoded) body we hand on.
_WIRE_HEADERS = frozenset({"content-encoding", "transfer-encoding", "content-length"})


def direct_driver_for(client: BaseClient) -> DirectDriver | None:
    """The direct driver for ``client``'s base URL, or ``None`` (see :func:`direct_transport_for`)."""
    transport = direct_transport_for(client.base_url, client.timeout)
    return None if transport is None else DirectDriver(client, transport)


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

    def target(self, call: Call[Any]) -> str:
        query = urlencode(list(call.params))
        return self.prefix + call.path + (f"?{query}" if query else "")

    def request_for(self, call: Call[Any]) -> httpx.Request:
        """An httpx request naming what was sent, for error messages and status mapping."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return httpx.Request(call.method, f"http://{netloc}:{self.port}{self.target(call)}")

    def send(self, call: Call[Any], headers: dict[str, str], request: httpx.Request) -> _Answer:
        """Connect, send, read the status line and headers; ``close()`` the answer after."""
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
                return _Answer(connection, connection.getresponse(), request)
        except BaseException:
            connection.close()
            raise


class _Unread(httpx.SyncByteStream):
    """The body of an answer that the driver reads itself (``Pull``, ``Read``)."""

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


class _Answer:
    """One answer on its own connection, and the ``httpx.Response`` the exchange sees."""

    def __init__(self, connection: http.client.HTTPConnection, raw: http.client.HTTPResponse, request: httpx.Request):
        self.connection = connection
        self.raw = raw
        self.request = request
        self.response = httpx.Response(raw.status, headers=raw.getheaders(), stream=_Unread(), request=request)

    def readinto(self, buffer: memoryview) -> int:
        with _translated("read", self.request):
            return self.raw.readinto(buffer)

    def error_response(self) -> httpx.Response:
        """An error answer with (most of) its body, for the one error mapping."""
        headers = [(k, v) for k, v in self.raw.getheaders() if k.lower() not in _WIRE_HEADERS]
        with _translated("read", self.request):
            body = self.raw.read(_MAX_ERROR_BODY)
        return httpx.Response(self.raw.status, headers=headers, content=body, request=self.request)

    def close(self) -> None:
        self.connection.close()


class DirectDriver(SyncDriver):
    """Performs shard exchanges over a :class:`DirectTransport` (one connection each)."""

    def __init__(self, client: BaseClient, transport: DirectTransport) -> None:
        self.client = client
        self.transport = transport

    def __repr__(self) -> str:
        return f"DirectDriver({self.transport!r})"

    def send(self, step: Send, run: Run) -> httpx.Response:
        headers = self.client._default_headers() | (step.headers or {})
        run.body = self.transport.send(step.call, headers, self.transport.request_for(step.call))
        run.response = run.body.response
        return run.response

    def pull(self, step: Pull, run: Run) -> int:
        n = step.receiver.receive(run.body.readinto)
        if not n and not step.receiver.complete and run.body.raw.length != 0:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=run.body.request
            )
        return n

    def read(self, step: Read, run: Run) -> httpx.Response:
        return run.body.error_response()

    def close(self, run: Run) -> None:
        if run.body is not None:
            answer, run.response, run.body = run.body, None, None
            answer.close()


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
