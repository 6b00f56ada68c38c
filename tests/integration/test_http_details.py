"""HTTP and OpenAPI details: complete ``Allow`` headers, HEAD wherever GET is served, the
limits the service enforces stated in its schema, and requests the HTTP parser refuses
answered with a problem document (bearer auth in the schema: test_read_tokens.py).

Before: ``OPTIONS /v1/models`` answered 405 with ``Allow: POST`` (the methods of the first
route that matched the path only) and ``HEAD /v1/models`` 405; the schema had no bounds on
``max_shard_bytes``, nothing on NUL bytes or component lengths in paths, a free-form
``dtype``; uvicorn answered a request
line it could not parse with ``400 text/plain`` ("Invalid HTTP request received.").
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from raw_http import connect, read_response

from megaload.checkpoint._dtypes import DTYPE_SPELLINGS
from megaload.server import ProblemH11Protocol, uvicorn_config
from megaload_client import problems

MiB = 1 << 20


class ThreadedServer(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a thread)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _allow(r: httpx.Response) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("OPTIONS", "/v1/models", {"GET", "HEAD", "POST"}),
        ("PUT", "/v1/models", {"GET", "HEAD", "POST"}),
        ("PATCH", "/v1/models/abc", {"GET", "HEAD", "DELETE"}),
        ("POST", "/v1/models/abc/state_dict/0", {"GET", "HEAD"}),
        ("GET", "/v1/models/abc/save", {"POST"}),
        ("DELETE", "/healthz", {"GET", "HEAD"}),
        ("OPTIONS", "/v1/jobs/some-job", {"GET", "HEAD", "DELETE"}),
    ],
)
def test_405_lists_every_method_the_path_serves(service, method, path, allowed):
    r = service.client.request(method, path)
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == problems.METHOD_NOT_ALLOWED
    assert _allow(r) == allowed


def test_head_is_served_wherever_get_is(service):
    for path in ("/v1/models", "/v1/info", "/healthz", "/v1/jobs"):
        get, head = service.client.get(path), service.client.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    missing = service.client.head("/v1/models/nope")
    assert missing.status_code == 404 and missing.content == b""


def _param(operation: dict, name: str) -> dict:
    return next(p for p in operation["parameters"] if p["name"] == name)["schema"]


def _nullable(schema: dict) -> dict:
    return next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)


def _component(schema: dict, ref_or_schema: dict) -> dict:
    ref = ref_or_schema["$ref"].rsplit("/", 1)[1]
    return schema["components"]["schemas"][ref]


def test_the_schema_states_the_limits_the_service_enforces(service):
    schema = service.client.get("/openapi.json").json()
    paths = schema["paths"]
    for operation in (paths["/v1/models/{model_id}/state_dict"]["get"], paths["/v1/models/{model_id}/state_dict/{n}"]["get"]):
        size = _nullable(_param(operation, "max_shard_bytes"))
        assert (size["minimum"], size["maximum"]) == (MiB, 64 << 30)
        assert set(_nullable(_param(operation, "dtype"))["enum"]) == set(DTYPE_SPELLINGS)
        keys = _nullable(_param(operation, "keys"))
        assert (keys["maxItems"], keys["items"]["maxLength"]) == (64, 1024)
    load = _component(schema, paths["/v1/models"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert set(_nullable(load["properties"]["dtype"])["enum"]) == set(DTYPE_SPELLINGS)

    path_schemas = [_param(paths["/v1/checkpoints/config"]["get"], "path"), load["properties"]["checkpoint_path"]]
    save = _component(schema, paths["/v1/models/{model_id}/save"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    path_schemas += [save["properties"]["path"], _nullable(save["properties"]["hf_tokenizer_path"])]
    for path_schema in path_schemas:
        assert path_schema["maxLength"] == 4096
        pattern = re.compile(path_schema["pattern"])  # an ECMA-262 pattern Python reads the same
        assert pattern.search("ckpts/run1/iter_0000100") and pattern.search("/" + "a" * 255 + "/b")
        assert not pattern.search("run1\x00/etc/passwd")
        assert not pattern.search("run1/" + "a" * 256)
    # and the service refuses what the patterns exclude, with the 400 the schema documents
    r = service.client.get("/v1/checkpoints/config", params={"path": "mlm_gpt/" + "a" * 256})
    assert r.status_code == 400 and r.json()["limit"] == 255
    assert "400" in paths["/v1/checkpoints/config"]["get"]["responses"]


MALFORMED = (
    b"GET /v1/info HTTP/1.1\r\nHost: test\r\nNo colon in this header\r\n\r\n",
    b"GET /v1/in fo HTTP/1.1\r\nHost: test\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello to the plain port
)


@pytest.mark.parametrize("raw", MALFORMED)
def test_requests_the_parser_refuses_get_a_problem(service, raw):
    with connect(service.base_url) as sock:
        sock.sendall(raw)
        r = read_response(sock)
    assert r.status == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == problems.BAD_REQUEST and r.json()["status"] == 400
    assert r.headers["connection"] == "close"


def test_the_h11_protocol_answers_the_same():
    """The fallback protocol (uvicorn's h11, where httptools is not installed)."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            seen.append(sorted(scope.get("extensions", {})))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    settings = SimpleNamespace(host="127.0.0.1", port=0, shutdown_grace_seconds=1)
    server = ThreadedServer(uvicorn_config(app, settings, http=ProblemH11Protocol, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        assert httpx.get(base + "/").status_code == 204
        assert seen == [["megaload.connection"]]
        for raw in MALFORMED[:2]:
            with connect(base) as sock:
                sock.sendall(raw)
                r = read_response(sock)
            assert r.status == 400 and r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == problems.BAD_REQUEST
    finally:
        server.should_exit = True
        thread.join(30)
