"""Request bodies are bounded as they stream in, whatever their framing, and a request without
a valid token is refused before its body is read.

Bodies go over a plain socket (``raw_http``): ``Transfer-Encoding: chunked`` bodies of a chosen
size, the framing whose length the server cannot know from the headers. Memory is this
process's peak RSS while the body is sent (the server runs in this process); the sender
reuses one 1 MiB buffer, so what grows is the server's.

Measured before bodies were bounded as they stream (the limit was checked against
``Content-Length`` only, and FastAPI reads a body whole before any dependency runs): 200 MiB
chunked, no token, to a server with a token: RSS +468 MiB (still held afterwards), answered
422 (the body was parsed before the token was looked at); 64 MiB chunked with the token:
+128 MiB, 422. After: no token, 401 before any of the body is read, RSS +1 MiB; with the
token, 413 after 11 MiB had been sent (the limit and the socket buffers), RSS +9 MiB.
"""

from __future__ import annotations

import json

import pytest
from raw_http import MiB, PeakRss, connect, read_response, readable, send_chunked

from megaload_client import problems

BODY_LIMIT = 8 * MiB
# A bound for the server's memory while it refuses a body (not a performance figure): the
# limit itself, the server's read buffers and allocator slack. The unbounded server took
# several times the body.
RSS_BOUND = BODY_LIMIT + 48 * MiB


def _head(path: str, *, token: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{auth}{extra}\r\n"
    ).encode("latin-1")


TOKEN = "body-limit-test-token-0123456789"


@pytest.fixture
def guarded(start):
    with start(token=TOKEN) as svc:
        yield svc


def test_no_token_is_refused_before_the_body_is_read(guarded):
    with connect(guarded.base_url) as sock:
        sock.sendall(_head("/v1/models", token=None))
        sock.sendall(b"10\r\n" + b"{" * 16 + b"\r\n")  # the body has begun and is not complete
        assert readable(sock, 10.0), "the server waited for the body before answering"
        r = read_response(sock)
    assert r.status == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == problems.UNAUTHORIZED
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers.get("connection") == "close"


@pytest.mark.parametrize("token", [None, "not-the-token-0123456789"])
def test_a_large_chunked_body_without_a_valid_token_costs_no_memory(guarded, token):
    with connect(guarded.base_url) as sock, PeakRss() as rss:
        sock.sendall(_head("/v1/models", token=token))
        sent = send_chunked(sock, 200 * MiB)
        r = read_response(sock)
    assert r.status == 401 and r.json()["type"] == problems.UNAUTHORIZED
    assert rss.growth < RSS_BOUND, f"server RSS grew by {rss.growth / MiB:.0f} MiB for a refused body"
    assert sent < 200 * MiB, "the server took the whole 200 MiB body before refusing it"


def test_a_chunked_body_over_the_limit_gets_413_as_it_streams(guarded):
    with connect(guarded.base_url) as sock, PeakRss() as rss:
        sock.sendall(_head("/v1/models", token=TOKEN))
        sent = send_chunked(sock, 64 * MiB)
        r = read_response(sock)
    assert r.status == 413
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == problems.PAYLOAD_TOO_LARGE and body["limit"] == BODY_LIMIT
    assert rss.growth < RSS_BOUND, f"server RSS grew by {rss.growth / MiB:.0f} MiB for a 413"
    assert sent < 64 * MiB


def test_a_declared_length_over_the_limit_gets_413_at_once(guarded):
    with connect(guarded.base_url) as sock:
        sock.sendall(
            f"POST /v1/models HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n".encode()
        )
        assert readable(sock, 10.0)
        r = read_response(sock)
    assert r.status == 413 and r.json()["limit"] == BODY_LIMIT


def test_a_chunked_body_within_the_limit_is_served(guarded):
    body = json.dumps({"checkpoint_path": "mlm_gpt"}).encode()
    with connect(guarded.base_url, timeout=120) as sock:
        sock.sendall(_head("/v1/models", token=TOKEN))
        for i in range(0, len(body), 7):  # several chunks
            part = body[i : i + 7]
            sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        r = read_response(sock, timeout=120)
    assert r.status in (200, 201), r.body
    assert r.json()["checkpoint_path"] == "mlm_gpt"
    # the connection stays usable after a body read whole
    guarded.client.delete(f"/v1/models/{r.json()['id']}")
