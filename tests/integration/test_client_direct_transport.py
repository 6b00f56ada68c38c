"""Shard bodies read by the standard library straight into their destination, and when not.

Tests taking ``make_client`` run over both clients (``Client`` and ``AsyncClient``).

Same real uvicorn test server as ``test_client_transport`` (real safetensors shards, Range,
ETags, drops, 503s). Which transport carried a shard is observed from the server's side:
httpx pools connections, so with one worker the index and every shard arrive on the same
client port; the direct reader opens a connection per shard.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from test_client_transport import _assert_equal, behaviour, make_client, server, shards, url  # noqa: F401 - fixtures

import megaload_client as mc
from megaload_client._direct_transport import direct_transport_for
from megaload_client._exchange import shard_body
from megaload_client._resume import BufferSink, ShardTransfer
from megaload_client._routes import Call


def _ports(behaviour, path_end: str) -> set[int]:
    return {port for method, path, port in behaviour.peers if method == "GET" and path.endswith(path_end)}


def _shard_ports(behaviour) -> list[set[int]]:
    return [_ports(behaviour, f"/state_dict/{n}") for n in range(3)]


def test_plain_http_reads_every_shard_on_its_own_connection(url, shards, behaviour):
    with mc.Client(url) as client:
        assert client.shard_transport == "direct"
        tensors = client.state_dict("m1", max_workers=1)
    _assert_equal(tensors, shards.tensors)
    index_ports = _ports(behaviour, "/state_dict")
    shard_ports = _shard_ports(behaviour)
    assert all(len(p) == 1 for p in shard_ports)
    assert len(set.union(*shard_ports)) == 3  # a connection per shard...
    assert not index_ports & set.union(*shard_ports)  # ...none of them httpx's pooled one


def test_own_http_client_carries_the_shards_too(url, shards, behaviour):
    with httpx.Client() as http, mc.Client(url, http_client=http) as client:
        assert client.shard_transport == "httpx"
        tensors = client.state_dict("m1", max_workers=1)
    _assert_equal(tensors, shards.tensors)
    used = _ports(behaviour, "/state_dict").union(*_shard_ports(behaviour))
    assert len(used) == 1  # the caller's pooled connection for the index and every shard


def test_async_client_reads_shards_directly_and_falls_back_with_its_own_client(url, shards, behaviour):
    async def scenario():
        async with mc.AsyncClient(url) as client:
            assert client.shard_transport == "direct"
            direct = await client.state_dict("m1", max_workers=1)
        direct_ports = _shard_ports(behaviour)
        behaviour.peers.clear()
        async with httpx.AsyncClient() as http, mc.AsyncClient(url, http_client=http) as client:
            assert client.shard_transport == "httpx"
            pooled = await client.state_dict("m1", max_workers=1)
        return direct, direct_ports, pooled

    direct, direct_ports, pooled = asyncio.run(scenario())
    _assert_equal(direct, shards.tensors)
    _assert_equal(pooled, shards.tensors)
    assert len(set.union(*direct_ports)) == 3
    assert len(_ports(behaviour, "/state_dict").union(*_shard_ports(behaviour))) == 1


@pytest.mark.parametrize(
    "base_url, environment, expected",
    [
        ("https://models.example:8443", {}, "httpx"),
        ("http://user:secret@127.0.0.1:8000", {}, "httpx"),
        ("http://127.0.0.1:8000", {"HTTP_PROXY": "http://proxy.example:3128"}, "httpx"),
        ("http://127.0.0.1:8000", {"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "127.0.0.1"}, "direct"),
        ("http://127.0.0.1:8000/prefix/", {}, "direct"),
    ],
)
def test_which_urls_the_direct_reader_takes(make_client, base_url, environment, expected, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with make_client(base_url) as client:
        assert client.shard_transport == expected


def test_url_prefix_query_and_token_reach_the_server(make_client, url, behaviour):
    behaviour.token = "t0ken"
    with make_client(url, token="t0ken", headers={"X-Trace": "abc"}) as client:
        client.state_dict("m1", dtype="bf16", keys=["decoder."], max_shard_bytes=4096)
    shard_requests = [(q, h) for m, p, q, h in behaviour.log if m == "GET" and "/state_dict/" in p]
    assert len(shard_requests) == 3
    for query, headers in shard_requests:
        assert sorted(query) == sorted([("max_shard_bytes", "4096"), ("dtype", "bf16"), ("keys", "decoder.")])
        assert headers["authorization"] == "Bearer t0ken" and headers["x-trace"] == "abc"
        assert headers["accept-encoding"] == "identity"
    transport = direct_transport_for(url + "/api/", httpx.Timeout(5.0))
    call = Call("GET", "/v1/models/m1/state_dict/0", lambda r: None, params=(("keys", "a b/c"),))
    assert transport.target(call) == "/api/v1/models/m1/state_dict/0?keys=a+b%2Fc"


def _one_shard(client: mc.Client, number: int, size: int = 10) -> ShardTransfer:
    transfer = ShardTransfer(BufferSink(size), size)
    call = Call("GET", f"/v1/models/m1/state_dict/{number}", lambda r: None)
    for _ in client._direct.stream(shard_body(client, call, transfer)):
        pass
    return transfer


def test_error_answers_go_through_the_one_mapping(make_client, url, behaviour):
    with make_client(url) as client:
        with pytest.raises(mc.ShardNotFoundError, match="no shard 9") as caught:
            _one_shard(client, 9)
        assert isinstance(caught.value, LookupError) and caught.value.status_code == 404
        behaviour.token = "t0ken"
        with pytest.raises(mc.AuthenticationError, match="send Authorization"):
            _one_shard(client, 0)


def test_503_with_retry_after_is_retried_on_shards(make_client, url, shards, behaviour):
    behaviour.shard_unavailable = 2
    with make_client(url) as client:
        tensors = client.state_dict("m1", max_workers=1)
    _assert_equal(tensors, shards.tensors)
    assert len(behaviour.requests("GET", "/state_dict/0")) == 3
    behaviour.shard_unavailable = 5
    with make_client(url, max_retries=1) as client:
        with pytest.raises(mc.ServiceUnavailableError, match="engine busy"):
            client.state_dict("m1", max_workers=1)


def test_connection_failures_are_typed_connection_errors(make_client, url):
    with make_client("http://127.0.0.1:1", max_retries=0) as client:
        with pytest.raises(mc.APIConnectionError, match="could not talk to the service"):
            _one_shard(client, 0)
    with make_client(url, timeout=0.3, max_retries=0) as client:
        call = Call("GET", "/v1/slow", lambda r: None)
        with pytest.raises(mc.APITimeoutError) as caught:
            for _ in client._direct.stream(shard_body(client, call, ShardTransfer(BufferSink(2), 2))):
                pass
    assert isinstance(caught.value, TimeoutError)


def test_a_corrupt_partial_file_is_caught_while_resuming_and_removed(make_client, url, shards, behaviour, tmp_path):
    target = tmp_path / "out"
    behaviour.drop_always[1] = 2500
    with make_client(url, max_retries=0) as client:
        with pytest.raises(mc.APIConnectionError):
            client.download("m1", target, max_workers=1)
        pattern = f"{shards.files[1].name}.*.incomplete"
        (partial,) = target.glob(pattern)
        data = bytearray(partial.read_bytes())
        data[-1] ^= 0xFF  # a byte already on disk goes bad: only hashing what was kept finds it
        partial.write_bytes(bytes(data))
        behaviour.drop_always.clear()
        with pytest.raises(mc.IntegrityError, match="does not match"):
            client.download("m1", target, max_workers=1)
        assert not list(target.glob(pattern))
        result = client.download("m1", target)
    assert result.checksums_verified and result.resumed == []
    assert (target / shards.files[1].name).read_bytes() == shards.files[1].read_bytes()


def test_iter_tensors_stopped_early_on_both_clients(url, shards):
    with mc.Client(url) as client:
        stream = client.iter_tensors("m1")
        name, tensor = next(stream)
        stream.close()
        assert torch.equal(tensor, shards.tensors[name])

    async def scenario():
        async with mc.AsyncClient(url) as client:
            stream = await client.iter_tensors("m1")
            name, tensor = await stream.__anext__()
            await stream.aclose()
            return name, tensor, await client.state_dict("m1")

    name, tensor, again = asyncio.run(scenario())
    assert torch.equal(tensor, shards.tensors[name])
    _assert_equal(again, shards.tensors)
