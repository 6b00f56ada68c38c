"""HTTP/1.1 over a plain socket, for what httpx will not send: chunked bodies of chosen size,
malformed requests, a client that stops reading; and a sampler of this process's peak RSS.

The servers of the integration tests run in this process (``conftest.start_service``), so
this process's RSS is the server's plus the test's own (small and steady) share.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil

__all__ = ["RawResponse", "connect", "read_response", "send_chunked", "PeakRss", "MiB"]

MiB = 1 << 20


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    header_lines: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> dict:
        return json.loads(self.body)


def connect(base_url: str, timeout: float = 30.0) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether the server has sent something (or closed) within ``timeout`` seconds."""
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


def read_response(sock: socket.socket, timeout: float = 30.0) -> RawResponse:
    """One response: status line, headers, and a ``Content-Length`` body (read whole)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection before a whole response head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    header_lines = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        header_lines.append((name.strip().lower(), value.strip()))
    headers = dict(header_lines)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(status, headers, rest[:length], header_lines)


def send_chunked(sock: socket.socket, total: int, chunk: int = MiB) -> int:
    """Send ``total`` bytes as chunks of ``chunk`` bytes and the last chunk; returns the body
    bytes the socket took before the server closed it (``total`` when it took them all)."""
    piece = b"x" * chunk
    size_line = b"%x\r\n" % chunk
    sent = 0
    try:
        while sent < total:
            sock.sendall(size_line)
            sock.sendall(piece)
            sock.sendall(b"\r\n")
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


class PeakRss:
    """``with PeakRss() as rss:`` samples this process's RSS every few milliseconds;
    ``rss.growth`` is the peak less the RSS at entry, in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.start = 0
        self.peak = 0

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start
