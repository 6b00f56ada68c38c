"""A loopback TCP relay that records requests and can break one answer midway.

Tests put it between a real HTTP client and the real server to see what the client asked
(request lines and ``Range`` headers) and to make a connection die after a given number of
answer bytes, as a flaky network does. It relays bytes unchanged; it understands HTTP only
enough to find request lines in what the client sends.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

__all__ = ["CuttingProxy", "SeenRequest"]


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    range: str | None


@dataclass
class _Cut:
    path_part: str
    after_bytes: int
    times: int


@dataclass
class CuttingProxy:
    """``with CuttingProxy(port) as proxy:`` relays ``127.0.0.1:proxy.port`` to ``upstream_port``.

    ``cut(path_part, after_bytes)`` makes the next answer to a request whose path contains
    ``path_part`` stop after ``after_bytes`` bytes (the connection is closed then).
    """

    upstream_port: int
    requests: list[SeenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cuts: list[_Cut] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cutting-proxy", daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, path_part: str, after_bytes: int, times: int = 1) -> None:
        with self._lock:
            self._cuts.append(_Cut(path_part, after_bytes, times))

    def seen(self, method: str, path_part: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    # ------------------------------------------------------------------ relay

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            budget: list[int | None] = [None]  # answer bytes left before the cut, None: no cut
            threading.Thread(target=self._upward, args=(client, upstream, budget), daemon=True).start()
            threading.Thread(target=self._downward, args=(upstream, client, budget), daemon=True).start()

    def _upward(self, client: socket.socket, upstream: socket.socket, budget: list[int | None]) -> None:
        pending = b""
        try:
            while data := client.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    self._note(head, budget)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _note(self, head: bytes, budget: list[int | None]) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2:
            return
        ranges = [line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("range:")]
        request = SeenRequest(parts[0], parts[1], ranges[0] if ranges else None)
        with self._lock:
            self.requests.append(request)
            budget[0] = None  # a cut applies to one answer only
            for cut in self._cuts:
                if cut.times > 0 and cut.path_part in request.path and request.method == "GET":
                    cut.times -= 1
                    budget[0] = cut.after_bytes
                    break

    def _downward(self, upstream: socket.socket, client: socket.socket, budget: list[int | None]) -> None:
        try:
            while data := upstream.recv(65536):
                left = budget[0]
                if left is not None:
                    if len(data) >= left:
                        client.sendall(data[:left])
                        break
                    budget[0] = left - len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
