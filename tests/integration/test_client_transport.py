"""The client against a real HTTP server that misbehaves on purpose.

A small Starlette app on a real uvicorn server (127.0.0.1, port 0) serves real safetensors
files written by ``safetensors.torch.save_file`` with Range/If-Range/ETag, and can drop a
connection midway, answer 503 with Retry-After, ignore ranges, change a shard's version or
corrupt a byte. The client under test is the real one, over real sockets: tests taking
``make_client`` run twice, over ``Client`` and over ``AsyncClient`` (driven from this blocking
code by :mod:`blocking_async`).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import uvicorn
import xxhash
from blocking_async import BlockingAsyncClient
from safetensors.torch import load_file, save_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import megaload_client as mc

PROBLEM = "application/problem+json"


# ---------------------------------------------------------------------- the server


@dataclass
class Behaviour:
    """What the server does; reset before each test."""

    token: str | None = None
    drop_after: dict[int, int] = field(default_factory=dict)  # shard -> bytes sent before cutting (once)
    drop_always: dict[int, int] = field(default_factory=dict)  # shard -> bytes sent before cutting (every time)
    unavailable: int = 0  # answer 503 to this many /v1/info requests first
    shard_unavailable: int = 0  # answer 503 to this many shard GETs first
    ignore_range: bool = False
    version: int = 1
    corrupt: int | None = None  # shard whose last byte is flipped
    job_polls: int = 0
    job_final: str = "succeeded"
    index_tensors: dict[str, dict] | None = None  # the index's "tensors" (None: an older server's index)
    log: list[tuple[str, str, list[tuple[str, str]], dict[str, str]]] = field(default_factory=list)
    peers: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, client port

    def requests(self, method: str, path_end: str) -> list[dict[str, str]]:
        return [h for m, p, _, h in self.log if m == method and p.endswith(path_end)]


@dataclass
class Shards:
    files: list[Path]
    tensors: dict[str, torch.Tensor]
    index: dict


def _make_shards(directory: Path) -> Shards:
    g = torch.Generator().manual_seed(5)
    parts = [
        {"embedding.word_embeddings.weight": torch.randn(64, 32, generator=g),
         "decoder.layers.0.self_attention.linear_qkv.weight": torch.randn(96, 32, generator=g).to(torch.bfloat16)},
        {"decoder.layers.0.mlp.linear_fc1.weight": torch.randn(128, 32, generator=g),
         "decoder.layers.0.mlp.linear_fc1.bias": torch.randn(128, generator=g).to(torch.float16),
         "decoder.final_layernorm.weight": torch.ones(32)},
        {"output_layer.weight": torch.randn(64, 32, generator=g), "step": torch.tensor([7], dtype=torch.int64)},
    ]
    files, weight_map, checksums, shards, tensors, total = [], {}, {}, [], {}, 0
    for number, part in enumerate(parts):
        name = f"model-{number + 1:05d}-of-{len(parts):05d}.safetensors"
        path = directory / name
        save_file(part, str(path))
        files.append(path)
        for key, tensor in part.items():
            weight_map[key] = name
            raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
            checksums[key] = xxhash.xxh3_64(raw).hexdigest()
            total += len(raw)
            tensors[key] = tensor
        shards.append({"index": number, "filename": name, "size": path.stat().st_size, "tensor_count": len(part)})
    index = {"metadata": {"total_size": total}, "total_size": total, "shards": shards, "weight_map": weight_map,
             "checksum_algorithm": "xxh3_64", "checksums": checksums, "skipped": ["decoder.layers.0._extra_state"]}
    return Shards(files, tensors, index)


def _problem(status: int, type_: str, title: str, detail: str, **headers: str) -> JSONResponse:
    body = {"type": f"urn:megaload:problem:{type_}", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _app(behaviour: Behaviour, shards: Shards):
    def authorized(request: Request) -> bool:
        return behaviour.token is None or request.headers.get("authorization") == f"Bearer {behaviour.token}"

    def denied() -> JSONResponse:
        return _problem(401, "unauthorized", "Missing or invalid bearer token", "send Authorization: Bearer")

    async def info(request: Request) -> Response:
        if not authorized(request):
            return denied()
        if behaviour.unavailable > 0:
            behaviour.unavailable -= 1
            return _problem(503, "not-ready", "Service not ready", "engine starting", **{"Retry-After": "0"})
        return JSONResponse({"hello": "world"})

    async def slow(request: Request) -> Response:
        await asyncio.sleep(2)
        return JSONResponse({})

    async def index(request: Request) -> Response:
        if not authorized(request):
            return denied()
        if request.path_params["model"] != "m1":
            return _problem(404, "model-not-found", "Model not found", f"no resident model {request.path_params['model']!r}")
        if behaviour.index_tensors is not None:
            return JSONResponse({**shards.index, "tensors": behaviour.index_tensors})
        return JSONResponse(shards.index)

    async def shard(request: Request) -> Response:
        if not authorized(request):
            return denied()
        number = int(request.path_params["n"])
        if request.path_params["model"] != "m1" or not 0 <= number < len(shards.files):
            return _problem(404, "shard-not-found", "Shard not found", f"no shard {number}")
        if request.method == "GET" and behaviour.shard_unavailable > 0:
            behaviour.shard_unavailable -= 1
            return _problem(503, "not-ready", "Service not ready", "engine busy", **{"Retry-After": "0"})
        data = bytearray(shards.files[number].read_bytes())
        if behaviour.corrupt == number:
            data[-1] ^= 0xFF
        etag = f'"m1-{number}-v{behaviour.version}"'
        size = len(data)
        start = 0
        status = 200
        headers = {"etag": etag, "accept-ranges": "bytes"}
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if wanted and not behaviour.ignore_range and (if_range is None or if_range == etag):
            first = int(wanted.removeprefix("bytes=").split("-")[0])
            if first >= size:
                return _problem(416, "range-not-satisfiable", "Range not satisfiable", wanted,
                                **{"content-range": f"bytes */{size}"})
            start, status = first, 206
            headers["content-range"] = f"bytes {first}-{size - 1}/{size}"
        body = bytes(data[start:])
        headers["content-length"] = str(len(body))
        if request.method == "HEAD":
            return Response(b"", status_code=status, headers=headers, media_type="application/octet-stream")
        cut = behaviour.drop_always.get(number)
        if cut is None:
            cut = behaviour.drop_after.pop(number, None)

        async def chunks():
            step = 1000
            for offset in range(0, len(body), step):
                piece = body[offset : offset + step]
                if cut is not None and offset + len(piece) > cut:
                    yield piece[: max(cut - offset, 0)]
                    raise ConnectionAbortedError("test server cuts the connection")
                yield piece

        return StreamingResponse(chunks(), status_code=status, headers=headers, media_type="application/octet-stream")

    async def save(request: Request) -> Response:
        return _problem(503, "not-ready", "Service not ready", "engine starting", **{"Retry-After": "0"})

    async def job(request: Request) -> Response:
        behaviour.job_polls += 1
        state = "running" if behaviour.job_polls < 3 else behaviour.job_final
        body = {"id": request.path_params["job"], "kind": "save", "state": state,
                "progress": min(1.0, behaviour.job_polls / 3), "created_at": "2026-01-01T00:00:00Z",
                "target": "/saves/out"}
        if request.path_params["job"] == "forever":
            body.update(state="running", progress=0.1)
        if state == "failed":
            body["error"] = {"type": "urn:megaload:problem:checkpoint-exists", "title": "Checkpoint already exists",
                             "status": 409, "detail": "/saves/out exists"}
        return JSONResponse(body)

    routes = [
        Route("/v1/info", info),
        Route("/v1/slow", slow),
        Route("/v1/models/{model}/state_dict", index),
        Route("/v1/models/{model}/state_dict/{n}", shard, methods=["GET", "HEAD"]),
        Route("/v1/models/{model}/save", save, methods=["POST"]),
        Route("/v1/jobs/{job}", job),
    ]
    app = Starlette(routes=routes)

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope)
            query = list(request.query_params.multi_items())
            behaviour.log.append((request.method, request.url.path, query, dict(request.headers)))
            behaviour.peers.append((request.method, request.url.path, scope["client"][1]))
        await app(scope, receive, send)

    return recording


class _Server(uvicorn.Server):
    """uvicorn in a thread (no signal handlers off the main thread), port chosen by the OS."""

    def run_in_thread(self) -> tuple[threading.Thread, int]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return thread, self.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Shards:
    return _make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def server(shards):
    behaviour = Behaviour()
    config = uvicorn.Config(_app(behaviour, shards), host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    instance = _Server(config)
    thread, port = instance.run_in_thread()
    yield f"http://127.0.0.1:{port}", behaviour
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def url(server, monkeypatch):
    base, behaviour = server
    behaviour.__init__()  # fresh behaviour, same object the app holds
    monkeypatch.delenv("MEGALOAD_TOKEN", raising=False)
    return base


@pytest.fixture
def behaviour(server) -> Behaviour:
    return server[1]


@pytest.fixture(params=["sync", "async"])
def make_client(request):
    """``with make_client(url, **options) as client``: ``mc.Client``, or the real
    ``mc.AsyncClient`` behind blocking calls; the test runs once with each."""
    return mc.Client if request.param == "sync" else BlockingAsyncClient


def _assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], ordered: bool = True) -> None:
    if ordered:  # the index's weight_map order, which is the order the shards were written from
        assert list(got) == list(want)
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


# ---------------------------------------------------------------------- state dict


def test_state_dict_fetches_all_shards_in_parallel_and_matches(make_client, url, shards, behaviour):
    with make_client(url) as client:
        tensors = client.state_dict("m1", max_workers=3)
    _assert_equal(tensors, shards.tensors)
    assert len(behaviour.requests("GET", "/state_dict")) == 1
    assert sum(len(behaviour.requests("GET", f"/state_dict/{n}")) for n in range(3)) == 3


def test_state_dict_options_reach_the_index_and_every_shard(make_client, url, behaviour):
    with make_client(url) as client:
        client.state_dict("m1", dtype="bf16", keys=["decoder.", "embedding."], max_shard_bytes=4096)
    assert len(behaviour.log) == 4  # the index and three shards
    expected = [("max_shard_bytes", "4096"), ("dtype", "bf16"), ("keys", "decoder."), ("keys", "embedding.")]
    for _, _, query, _ in behaviour.log:
        assert sorted(query) == sorted(expected)


def test_state_dict_resumes_a_dropped_shard_with_range_and_if_range(make_client, url, shards, behaviour):
    behaviour.drop_after[1] = 2500
    with make_client(url) as client:
        tensors = client.state_dict("m1")
    _assert_equal(tensors, shards.tensors)
    attempts = behaviour.requests("GET", "/state_dict/1")
    assert len(attempts) == 2
    assert "range" not in attempts[0]
    assert attempts[1]["range"] == "bytes=2500-"
    assert attempts[1]["if-range"] == '"m1-1-v1"'


def test_a_corrupt_byte_fails_the_checksum(make_client, url, behaviour):
    behaviour.corrupt = 2
    with make_client(url) as client:
        with pytest.raises(mc.IntegrityError, match="output_layer.weight|step"):
            client.state_dict("m1")
        client.state_dict("m1", verify=False)  # sizes only: the flip is not noticed


def test_iter_tensors_streams_one_at_a_time_and_matches(make_client, url, shards, behaviour):
    behaviour.drop_after[0] = 3000  # resumed mid-tensor, before the consumer sees it
    with make_client(url) as client:
        stream = client.iter_tensors("m1")
        got = dict(stream)
    _assert_equal(got, shards.tensors, ordered=False)  # streamed in each file's data order
    assert behaviour.requests("GET", "/state_dict/0")[1]["range"] == "bytes=3000-"


def test_iter_tensors_stopped_early_leaves_the_client_usable(make_client, url, shards):
    with make_client(url) as client:
        stream = client.iter_tensors("m1")
        name, tensor = next(stream)
        stream.close()
        assert name in shards.tensors and torch.equal(tensor, shards.tensors[name])
        assert len(client.state_dict("m1")) == len(shards.tensors)


def test_missing_model_is_a_typed_error_with_the_detail(make_client, url):
    with make_client(url) as client:
        with pytest.raises(mc.ModelNotFoundError, match="no resident model 'nope'") as caught:
            client.state_dict("nope")
    assert isinstance(caught.value, LookupError)


# ---------------------------------------------------------------------- download


def test_download_writes_a_directory_safetensors_tools_can_load(make_client, url, shards, tmp_path):
    with make_client(url) as client:
        result = client.download("m1", tmp_path / "out")
    assert result.checksums_verified
    assert result.skipped == ["decoder.layers.0._extra_state"]
    index = json.loads((tmp_path / "out" / mc.INDEX_FILENAME).read_text())
    assert index["weight_map"] == shards.index["weight_map"]
    assert index["metadata"]["total_size"] == shards.index["total_size"]
    loaded = {}
    for filename in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(str(tmp_path / "out" / filename)))
    assert set(loaded) == set(shards.tensors)
    assert all(torch.equal(loaded[k], shards.tensors[k]) for k in loaded)
    for original in shards.files:
        assert (tmp_path / "out" / original.name).read_bytes() == original.read_bytes()
    assert not list((tmp_path / "out").glob("*.incomplete"))


def test_interrupted_download_resumes_from_the_incomplete_file(make_client, url, shards, behaviour, tmp_path):
    target = tmp_path / "out"
    behaviour.drop_always[2] = 1500
    with make_client(url, max_retries=0) as client:
        with pytest.raises(mc.APIConnectionError):
            client.download("m1", target, max_workers=1)
    partial = list(target.glob("*.incomplete"))
    assert len(partial) == 1 and partial[0].stat().st_size == 1500
    assert not (target / mc.INDEX_FILENAME).exists()

    behaviour.drop_always.clear()
    behaviour.log.clear()
    with make_client(url, max_retries=0) as client:
        result = client.download("m1", target)
    assert result.resumed == [shards.files[2].name]
    assert sorted(result.reused) == sorted(f.name for f in shards.files[:2])
    gets = behaviour.requests("GET", "/state_dict/2")
    assert len(gets) == 1 and gets[0]["range"] == "bytes=1500-"
    assert behaviour.requests("GET", "/state_dict/0") == []  # finished shards are not fetched again
    assert (target / shards.files[2].name).read_bytes() == shards.files[2].read_bytes()


def test_resume_against_a_changed_shard_starts_that_file_over(make_client, url, shards, behaviour, tmp_path):
    target = tmp_path / "out"
    behaviour.drop_always[0] = 1200
    with make_client(url, max_retries=0) as client:
        with pytest.raises(mc.APIConnectionError):
            client.download("m1", target, max_workers=1)
    behaviour.drop_always.clear()
    behaviour.version = 2  # a new ETag: the partial bytes belong to another version
    with make_client(url) as client:
        result = client.download("m1", target)
    assert result.resumed == []  # the stale .incomplete of version 1 was discarded
    assert (target / shards.files[0].name).read_bytes() == shards.files[0].read_bytes()
    assert len(list(target.glob("*.incomplete"))) == 0


def test_a_server_answering_200_to_a_range_request_is_handled(make_client, url, shards, behaviour, tmp_path):
    behaviour.ignore_range = True
    behaviour.drop_after[1] = 2000
    with make_client(url) as client:
        client.download("m1", tmp_path / "out")
    assert (tmp_path / "out" / shards.files[1].name).read_bytes() == shards.files[1].read_bytes()


def test_a_corrupt_download_is_never_renamed_into_place(make_client, url, shards, behaviour, tmp_path):
    behaviour.corrupt = 0
    with make_client(url) as client:
        with pytest.raises(mc.IntegrityError, match="does not match"):
            client.download("m1", tmp_path / "out", max_workers=1)
    assert not (tmp_path / "out" / shards.files[0].name).exists()
    assert not list((tmp_path / "out").glob(f"{shards.files[0].name}*"))  # known-bad bytes are not kept


# ---------------------------------------------------------------------- retries, auth, timeouts, jobs


def test_503_with_retry_after_is_retried_for_gets(make_client, url, behaviour):
    behaviour.unavailable = 2
    with make_client(url) as client:
        client._request(mc._routes.Call("GET", "/v1/info", lambda r: r.json()))
    assert len(behaviour.requests("GET", "/v1/info")) == 3


def test_retries_give_up_after_max_retries(make_client, url, behaviour):
    behaviour.unavailable = 5
    with make_client(url, max_retries=1) as client:
        with pytest.raises(mc.ServiceUnavailableError, match="engine starting"):
            client._request(mc._routes.Call("GET", "/v1/info", lambda r: r.json()))
    assert len(behaviour.requests("GET", "/v1/info")) == 2


def test_a_save_is_never_repeated(make_client, url, behaviour):
    with make_client(url) as client:
        with pytest.raises(mc.ServiceUnavailableError):
            client.save("m1", "/saves/out")
    assert len(behaviour.requests("POST", "/save")) == 1


def test_bearer_token_from_argument_or_environment(make_client, url, behaviour, monkeypatch):
    behaviour.token = "t0ken"
    with make_client(url) as client:
        with pytest.raises(mc.AuthenticationError, match="401"):
            client.state_dict_index("m1")
    with make_client(url, token="t0ken") as client:
        assert client.state_dict_index("m1").total_size > 0
    monkeypatch.setenv("MEGALOAD_TOKEN", "t0ken")
    with make_client(url) as client:
        assert client.state_dict_index("m1").total_size > 0


def test_read_timeout_is_a_typed_timeout(make_client, url):
    with make_client(url, timeout=0.3, max_retries=0) as client:
        with pytest.raises(mc.APITimeoutError) as caught:
            client._request(mc._routes.Call("GET", "/v1/slow", lambda r: r.json()))
    assert isinstance(caught.value, TimeoutError)


def test_connection_refused_is_a_typed_connection_error(make_client):
    with make_client("http://127.0.0.1:1", max_retries=0) as client:
        with pytest.raises(mc.APIConnectionError) as caught:
            client.state_dict_index("m1")
    assert isinstance(caught.value, ConnectionError)


def test_job_wait_polls_until_done(make_client, url, behaviour):
    with make_client(url) as client:
        job = client.get_job("j1")
        finished = job.wait(poll_interval=0.01)
    assert finished.state is mc.JobState.SUCCEEDED and behaviour.job_polls == 3


def test_job_wait_raises_when_the_job_fails(make_client, url, behaviour):
    behaviour.job_final = "failed"
    with make_client(url) as client:
        with pytest.raises(mc.JobFailedError, match="/saves/out exists") as caught:
            client.get_job("j1").wait(poll_interval=0.01)
    assert caught.value.job.error.status == 409


def test_job_wait_times_out(make_client, url):
    with make_client(url) as client:
        with pytest.raises(mc.JobTimeoutError) as caught:
            client.get_job("forever").wait(timeout=0.2, poll_interval=0.05)
    assert isinstance(caught.value, TimeoutError)


# ---------------------------------------------------------------------- async


def test_async_client_state_dict_iter_and_resumed_download(url, shards, behaviour, tmp_path):
    async def scenario():
        async with mc.AsyncClient(url) as client:
            behaviour.drop_after[1] = 2500
            tensors = await client.state_dict("m1")
            streamed = {name: t async for name, t in await client.iter_tensors("m1")}
            behaviour.drop_always[2] = 1500
            async with mc.AsyncClient(url, max_retries=0) as impatient:
                with pytest.raises(mc.APIConnectionError):
                    await impatient.download("m1", tmp_path / "out", max_workers=1)
            behaviour.drop_always.clear()
            result = await client.download("m1", tmp_path / "out")
            behaviour.unavailable = 1
            await client._request(mc._routes.Call("GET", "/v1/info", lambda r: r.json()))
            return tensors, streamed, result

    tensors, streamed, result = asyncio.run(scenario())
    _assert_equal(tensors, shards.tensors)
    _assert_equal(streamed, shards.tensors, ordered=False)
    assert result.resumed == [shards.files[2].name]
    assert (tmp_path / "out" / shards.files[2].name).read_bytes() == shards.files[2].read_bytes()
    assert behaviour.requests("GET", "/state_dict/1")[1]["range"] == "bytes=2500-"


# ---------------------------------------------------------------------- command line


def _cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "megaload_client", "--url", url, *args], capture_output=True, text=True, timeout=120
    )


def test_cli_download_and_errors_without_traceback(url, shards, tmp_path):
    done = _cli(url, "--json", "download", "m1", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["checksums_verified"] is True
    assert (tmp_path / "cli" / mc.INDEX_FILENAME).exists()

    missing = _cli(url, "download", "nope", str(tmp_path / "x"))
    assert missing.returncode == 1
    assert "404 Model not found: no resident model 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr

    refused = _cli("http://127.0.0.1:1", "--retries", "0", "ls")
    assert refused.returncode == 1 and "could not talk to the service" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_progress_bars_when_asked(make_client, url, shards, behaviour, tmp_path, capfd):
    behaviour.drop_after[0] = 1500
    behaviour.ignore_range = True  # the dropped shard starts over: the bar rewinds
    with make_client(url) as client:
        tensors = client.state_dict("m1", progress=True)
        client.download("m1", tmp_path / "out", progress=True)
        client.get_job("j1").wait(poll_interval=0.01, progress=True)
    _assert_equal(tensors, shards.tensors)
    err = capfd.readouterr().err
    assert "state_dict m1" in err and "download m1" in err and "save j1" in err


def test_the_default_verification_computes_checksums(make_client, url, shards, behaviour, tmp_path):
    """A flipped byte keeps every size and header: only a computed checksum notices it."""
    with make_client(url) as client:
        assert client.download("m1", tmp_path / "ok").checksums_verified
        behaviour.corrupt = 1
        for call in (lambda: client.state_dict("m1"), lambda: dict(client.iter_tensors("m1")),
                     lambda: client.download("m1", tmp_path / "bad")):
            with pytest.raises(mc.IntegrityError, match="xxh3_64 [0-9a-f]+ does not match the index"):
                call()


def test_without_xxhash_a_verified_call_refuses_instead_of_checking_sizes_only(make_client, url, shards, behaviour, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xxhash", None)  # as in an interpreter where xxhash does not import
    assert not mc.checksums_available()
    behaviour.corrupt = 1
    with make_client(url) as client:
        for call in (lambda: client.state_dict("m1"), lambda: client.download("m1", tmp_path / "out")):
            with pytest.raises(mc.ChecksumUnavailableError, match="xxhash.*verify=False") as info:
                call()
            assert isinstance(info.value, ImportError)
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.safetensors"))
        result = client.download("m1", tmp_path / "unverified", verify=False)  # asked for: sizes and headers only
        assert not result.checksums_verified
        assert set(client.state_dict("m1", verify=False)) == set(shards.tensors)


def test_an_unknown_checksum_algorithm_checks_sizes_and_warns_once(url, shards, behaviour, tmp_path, monkeypatch):
    from megaload_client import _checksums

    monkeypatch.setitem(shards.index, "checksum_algorithm", "blake9")
    monkeypatch.setattr(_checksums, "_warned", set())
    with mc.Client(url) as client:
        with pytest.warns(UserWarning, match="'blake9' checksums.*size and header only") as caught:
            result = client.download("m1", tmp_path / "out")
            client.state_dict("m1")
    assert len([w for w in caught if "blake9" in str(w.message)]) == 1
    assert not result.checksums_verified
    for original in shards.files:
        assert (tmp_path / "out" / original.name).read_bytes() == original.read_bytes()


# ---------------------------------------------------------------------- state_dict(out=...)


def _zeros_like(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.zeros_like(t) for key, t in tensors.items()}


def _shard_gets(behaviour: Behaviour) -> list[dict[str, str]]:
    return [h for m, p, _, h in behaviour.log if m == "GET" and "/state_dict/" in p]


def test_state_dict_out_fills_the_callers_tensors_in_place(make_client, url, shards, behaviour):
    out = _zeros_like(shards.tensors)
    pointers = {key: t.data_ptr() for key, t in out.items()}
    with make_client(url) as client:
        assert client.shard_transport == "direct"
        got = client.state_dict("m1", out=out, max_workers=3)
        fresh = client.state_dict("m1")
    assert got is out
    for key, tensor in out.items():
        assert tensor.data_ptr() == pointers[key]
        assert torch.equal(tensor.view(torch.uint8), fresh[key].view(torch.uint8)), key
    _assert_equal(out, shards.tensors)


def test_state_dict_out_survives_a_dropped_shard_and_a_restart(make_client, url, shards, behaviour):
    behaviour.drop_after[1] = 2500
    out = _zeros_like(shards.tensors)
    with make_client(url) as client:
        client.state_dict("m1", out=out)
    _assert_equal(out, shards.tensors)
    behaviour.__init__()
    behaviour.drop_after[0] = 1500
    behaviour.ignore_range = True  # the resume is answered 200: the shard starts over
    out = _zeros_like(shards.tensors)
    with make_client(url) as client:
        client.state_dict("m1", out=out)
    _assert_equal(out, shards.tensors)


def test_state_dict_out_checks_checksums_as_bytes_arrive(make_client, url, shards, behaviour):
    behaviour.corrupt = 2
    with make_client(url) as client:
        with pytest.raises(mc.IntegrityError, match="output_layer.weight|step"):
            client.state_dict("m1", out=_zeros_like(shards.tensors))


def test_state_dict_out_key_errors_come_before_any_shard_request(make_client, url, shards, behaviour):
    with make_client(url) as client:
        missing = _zeros_like(shards.tensors)
        del missing["output_layer.weight"]
        with pytest.raises(ValueError, match="output_layer.weight"):
            client.state_dict("m1", out=missing)
        extra = _zeros_like(shards.tensors)
        extra["not.streamed"] = torch.zeros(3)
        with pytest.raises(ValueError, match=r"not\.streamed.*strict=False"):
            client.state_dict("m1", out=extra)
        strided = _zeros_like(shards.tensors)
        strided["output_layer.weight"] = torch.zeros(32, 64).t()
        with pytest.raises(ValueError, match="output_layer.weight.*not contiguous"):
            client.state_dict("m1", out=strided)
        assert _shard_gets(behaviour) == []
        result = client.state_dict("m1", out=extra, strict=False)
    assert torch.equal(result["not.streamed"], torch.zeros(3))
    _assert_equal({k: v for k, v in result.items() if k != "not.streamed"}, shards.tensors)


@pytest.mark.parametrize(
    ("key", "wrong", "message"),
    [
        ("decoder.layers.0.mlp.linear_fc1.weight", torch.zeros(32, 128), r"shape \(32, 128\).*\(128, 32\)"),
        ("step", torch.zeros(1, dtype=torch.int32), r"torch.int32.*torch.int64"),
    ],
)
def test_state_dict_out_shape_and_dtype_errors_come_before_any_tensor_byte(make_client, url, shards, behaviour, key, wrong, message):
    out = _zeros_like(shards.tensors)
    out[key] = wrong
    with make_client(url) as client:
        with pytest.raises(ValueError, match=f"{re.escape(key)}.*{message}") as caught:
            client.state_dict("m1", out=out)
    assert not isinstance(caught.value, mc.IntegrityError)
    requests = _shard_gets(behaviour)
    assert requests and all(h["range"].startswith("bytes=0-") for h in requests)  # header probes only
    assert all(not t.any() for t in out.values())  # nothing written


def test_async_state_dict_out_fills_in_place(url, shards, behaviour):
    out = _zeros_like(shards.tensors)
    pointers = {key: t.data_ptr() for key, t in out.items()}

    async def fetch():
        async with mc.AsyncClient(url) as client:
            return await client.state_dict("m1", out=out)

    assert asyncio.run(fetch()) is out
    assert all(out[key].data_ptr() == pointers[key] for key in out)
    _assert_equal(out, shards.tensors)


def test_state_dict_out_through_a_callers_own_httpx_client(url, shards, behaviour):
    import httpx

    behaviour.drop_after[2] = 700
    out = _zeros_like(shards.tensors)
    with httpx.Client() as http, mc.Client(url, http_client=http) as client:
        assert client.shard_transport == "httpx"
        assert client.state_dict("m1", out=out) is out
    _assert_equal(out, shards.tensors)


# The safetensors spelling of the dtypes the test shards hold (the header's "dtype").
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def _index_tensors(shards: Shards) -> dict[str, dict]:
    """The ``tensors`` a current server adds to the index, from the files the test server serves."""
    numbers = {path.name: number for number, path in enumerate(shards.files)}
    return {
        key: {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "shard": numbers[shards.index["weight_map"][key]]}
        for key, t in shards.tensors.items()
    }


def test_state_dict_out_with_index_tensors_makes_no_header_requests(make_client, url, shards, behaviour):
    behaviour.index_tensors = _index_tensors(shards)
    out = _zeros_like(shards.tensors)
    with make_client(url) as client:
        assert client.state_dict("m1", out=out) is out
    _assert_equal(out, shards.tensors)
    gets = _shard_gets(behaviour)
    assert len(gets) == len(shards.files)  # one body request per shard, no Range probe before it
    assert all("range" not in headers for headers in gets)


def test_async_state_dict_out_with_index_tensors_makes_no_header_requests(url, shards, behaviour):
    behaviour.index_tensors = _index_tensors(shards)
    out = _zeros_like(shards.tensors)

    async def fetch():
        async with mc.AsyncClient(url) as client:
            return await client.state_dict("m1", out=out)

    assert asyncio.run(fetch()) is out
    _assert_equal(out, shards.tensors)
    assert [h.get("range") for h in _shard_gets(behaviour)] == [None] * len(shards.files)


@pytest.mark.parametrize(
    ("key", "wrong", "message"),
    [
        ("decoder.layers.0.mlp.linear_fc1.weight", torch.zeros(32, 128), r"shape \(32, 128\).*\(128, 32\)"),
        ("step", torch.zeros(1, dtype=torch.int32), r"torch.int32.*torch.int64"),
    ],
)
def test_state_dict_out_mismatch_from_index_tensors_comes_before_any_shard_request(make_client, 
    url, shards, behaviour, key, wrong, message
):
    behaviour.index_tensors = _index_tensors(shards)
    out = _zeros_like(shards.tensors)
    out[key] = wrong
    with make_client(url) as client:
        with pytest.raises(ValueError, match=f"{re.escape(key)}.*{message}") as caught:
            client.state_dict("m1", out=out)
    assert not isinstance(caught.value, mc.IntegrityError)
    assert _shard_gets(behaviour) == []
    assert all(not t.any() for t in out.values())


def test_index_tensors_that_disagree_with_the_shards_are_integrity_errors(make_client, url, shards, behaviour):
    tensors = _index_tensors(shards)
    tensors["step"] = {**tensors["step"], "shard": 0}  # weight_map says shard 2
    behaviour.index_tensors = tensors
    with make_client(url) as client:
        with pytest.raises(mc.IntegrityError, match="'step' in shard 0"):
            client.state_dict("m1", out=_zeros_like(shards.tensors))
    assert _shard_gets(behaviour) == []

    # The index claims the shape the caller's tensor has, the shard sends another: refused as
    # the shard's header arrives, before any of that tensor's bytes are written.
    tensors = _index_tensors(shards)
    tensors["output_layer.weight"] = {**tensors["output_layer.weight"], "shape": [32, 64]}
    behaviour.__init__()
    behaviour.index_tensors = tensors
    out = _zeros_like(shards.tensors)
    out["output_layer.weight"] = torch.zeros(32, 64)
    with make_client(url) as client:
        with pytest.raises(mc.IntegrityError, match=r"output_layer.weight.*\(64, 32\)"):
            client.state_dict("m1", out=out)
    assert not out["output_layer.weight"].any()


def test_index_tensors_missing_a_key_fall_back_to_header_requests(make_client, url, shards, behaviour):
    tensors = _index_tensors(shards)
    del tensors["step"]
    behaviour.index_tensors = tensors
    out = _zeros_like(shards.tensors)
    with make_client(url) as client:
        client.state_dict("m1", out=out)
    _assert_equal(out, shards.tensors)
    probes = [h for h in _shard_gets(behaviour) if h.get("range", "").startswith("bytes=0-")]
    assert len(probes) == len(shards.files)
