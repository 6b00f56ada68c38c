"""How the service runs on uvicorn: the server config, and HTTP protocol classes of our own.

``megaload serve`` (and the integration tests) build the server with :func:`uvicorn_config`,
which selects :data:`HTTP_PROTOCOL`: uvicorn's own HTTP/1.1 protocol (httptools when it is
installed, else h11, as uvicorn's ``auto``) with two additions:

* **Malformed requests get a problem document.** A request the HTTP parser refuses (a bad
  request line, an invalid header, a broken chunk size, headers too large) never reaches
  the application: uvicorn answers it itself, with ``400`` and a ``text/plain`` body, from
  its protocol's ``send_400_response``, the one hook it has for that answer. Ours writes the
  same status as ``application/problem+json`` (type ``urn:megaload:problem:bad-request``)
  and, as uvicorn does, closes the connection.
* **A response can abort its connection.** Every HTTP request's scope carries the extension
  ``"megaload.connection"`` (:class:`Connection`): the bytes written to the connection that
  the client has not taken yet (the transport's write buffer plus, on Linux, the socket's
  send queue: ``TIOCOUTQ``), which is how a streamed response tells whether the client
  still takes data, and ``abort()``,
  which drops the connection at once with whatever it still buffers. ASGI has no way to say
  that, and ``transport.close()``, all uvicorn does when an application gives up mid-body,
  waits for the buffer to drain, which a client that stopped reading never lets happen,
  while the buffered pieces (views of tensor memory) stay referenced.

What uvicorn still answers in ``text/plain``: ``503`` when ``limit_concurrency`` is exceeded
(not configured here) and ``500`` when an application fails before it starts a response
(the request middleware turns every exception into a problem first).
"""

from __future__ import annotations

import json
import struct
from typing import Any

try:
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ  # Linux: bytes in a socket's send queue
except (ImportError, AttributeError):
    _OUTQ = None

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from megaload_client import problems as p

__all__ = ["CONNECTION_EXTENSION", "HEAD_EXTENSION", "Connection", "HTTP_PROTOCOL", "uvicorn_config"]

CONNECTION_EXTENSION = "megaload.connection"
HEAD_EXTENSION = "megaload.head"  # set by the request middleware on a HEAD it runs as GET

_MALFORMED = "the request is not valid HTTP/1.1; the server's HTTP parser refused it"


class Connection:
    """What a request may do to its own connection (the ``megaload.connection`` extension)."""

    __slots__ = ("_transport", "_queue_readable")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._queue_readable = _OUTQ is not None

    def unsent_bytes(self) -> int:
        """Bytes written to the connection that the client has not taken yet: the transport's
        buffer and (where it can be read) the kernel's send queue of the socket."""
        pending = self._transport.get_write_buffer_size()
        if self._queue_readable:
            sock = self._transport.get_extra_info("socket")
            try:
                queued = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
                pending += struct.unpack("i", queued)[0]
            except (OSError, AttributeError, ValueError):
                self._queue_readable = False
        return pending

    def abort(self) -> None:
        """Drop the connection now, discarding what it still buffers."""
        self._transport.abort()


def _problem_400() -> bytes:
    body = {"type": p.BAD_REQUEST, "title": p.PROBLEM_TITLES[p.BAD_REQUEST], "status": 400, "detail": _MALFORMED}
    return json.dumps(body).encode("ascii")


class _Additions:
    """Mixed into uvicorn's protocol classes (see the module docstring)."""

    app: Any
    transport: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app

        async def app_with_connection(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                scope.setdefault("extensions", {})[CONNECTION_EXTENSION] = Connection(self.transport)
            await app(scope, receive, send)

        self.app = app_with_connection


def _httptools_protocol() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class ProblemHttpToolsProtocol(_Additions, HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = _problem_400()
            content = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/problem+json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()

    return ProblemHttpToolsProtocol


class ProblemH11Protocol(_Additions, H11Protocol):
    def send_400_response(self, msg: str) -> None:
        import h11

        body = _problem_400()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


HTTP_PROTOCOL: type = _httptools_protocol() or ProblemH11Protocol


def uvicorn_config(app: Any, settings: Any, **overrides: Any) -> uvicorn.Config:
    """The uvicorn config ``megaload serve`` runs ``app`` with; ``overrides`` win."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": 1,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "http": HTTP_PROTOCOL,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds) or None,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
