"""A client that opens a shard and stops reading loses its lease and its connection once the
stream has made no progress for ``stream_idle_timeout_seconds``; a slow reader that keeps
taking data keeps its stream.

The model is the generated GPT checkpoint (``library_models``, about 90 MiB of float32): a
shard is far larger than what the sockets buffer, so a client that stops reading really
stalls the server mid-stream. The stalled client is a plain socket with a small receive
buffer that reads the response head and then nothing.

Measured before streams had an idle timeout: the stalled stream kept its lease for the 60 s
observed (there was no limit), ``DELETE`` answered 204 but the 92 MB stayed accounted, and a
load that needed them (the same checkpoint in bfloat16, which fits the 120 MiB budget only
once the first copy is gone) had no answer in 60 s. After, with a 1 s timeout: the bytes were
released 1.3 s after the ``DELETE``, the connection reset, and the load answered 201 in 0.2 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from library_models import GENERATED_NAME, generate_gpt_checkpoint
from raw_http import connect, readable

IDLE_S = 1.0
WAIT_S = 60.0  # a bound for things that must happen, not a performance figure


def _wait_until(condition: Callable[[], bool], what: str, bound: float = WAIT_S) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > bound:
            raise AssertionError(f"not within {bound:.0f}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def svc(start, ckpt_root):
    generate_gpt_checkpoint(ckpt_root)
    with start(stream_idle_timeout_seconds=IDLE_S, memory_budget="120MiB") as s:
        yield s


def _leases(svc, model_id: str) -> int:
    return svc.client.get(f"/v1/models/{model_id}").json()["active_leases"]


def _used(svc) -> int:
    return svc.client.get("/v1/models").json()["memory"]["used_bytes"]


def _stalled_reader(svc, model_id: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    host, port = svc.base_url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/models/{model_id}/state_dict/0 HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # the head only: nothing of the body is read
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _closed_by_server(sock: socket.socket, bound: float) -> bool:
    """Drain what the kernel holds; True when the server reset or closed the connection."""
    sock.settimeout(bound)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_reader_that_stops_reading_loses_its_lease_and_its_connection(svc):
    model = svc.load(GENERATED_NAME)
    assert model.status_code in (200, 201), model.text
    model_id = model.json()["id"]
    used = _used(svc)
    sock = _stalled_reader(svc, model_id)
    try:
        assert _leases(svc, model_id) == 1
        assert svc.client.delete(f"/v1/models/{model_id}").status_code == 204
        # the bytes stay accounted while the stalled stream holds its lease...
        assert _used(svc) == used
        # ...until it has made no progress for the idle timeout
        waited = _wait_until(lambda: _used(svc) == 0, "the stalled stream's lease is released")
        assert waited >= IDLE_S * 0.5
        assert _closed_by_server(sock, WAIT_S), "the stalled connection is still open"
        assert svc.metric("megaload_streams_stalled_total") == 1
    finally:
        sock.close()
    # loads that needed the memory proceed: another (bf16) and the same checkpoint again
    other = svc.load(GENERATED_NAME, dtype="bf16")
    assert other.status_code == 201, other.text
    again = svc.load(GENERATED_NAME)
    assert again.status_code == 201, again.text


def test_a_slow_reader_that_keeps_reading_keeps_its_stream(svc):
    model_id = svc.load(GENERATED_NAME).json()["id"]
    url = f"/v1/models/{model_id}/state_dict/0"
    size = 12 << 20  # the first 12 MiB of the shard
    # 1 MiB, then a pause of half the idle timeout: 2 MiB/s, so one 4 MiB piece of the
    # server's takes twice the idle timeout to drain, but the buffer drains all along.
    received = 0
    with connect(svc.base_url) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: test\r\nRange: bytes=0-{size - 1}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 206"), head
        while received < size:
            got = 0
            while got < 1 << 20 and received < size:
                assert readable(sock, WAIT_S)
                chunk = sock.recv(min(65536, size - received))
                assert chunk, f"the server closed the stream after {received} of {size} bytes"
                got += len(chunk)
                received += len(chunk)
            time.sleep(IDLE_S / 2)
    assert received == size
    assert svc.metric("megaload_streams_stalled_total") == 0
