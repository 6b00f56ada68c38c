"""The leased streaming body on its own: a HEAD run as GET produces no piece, a stalled send
(under a server without the connection extension) ends the stream and releases the lease.

The registry is real; its loader is a small stand-in (what is under test is the response).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from megaload.api.streaming_body import LeasedStreamingResponse, StreamStalled
from megaload.registry import LoadSpec, Registry
from megaload.server import HEAD_EXTENSION


class Loader:
    async def estimate_bytes(self, iteration_dir, dtype, on_start=None):
        return 10

    async def load(self, model_id, spec, on_start=None, on_progress=None):
        return SimpleNamespace(size_bytes=10, state_dict={})

    async def release(self, model_id):
        pass


def _pieces(produced: list[int]):
    for i in range(4):
        produced.append(i)
        yield memoryview(b"x" * 1024)


async def _leased() -> tuple[Registry, str]:
    registry = Registry(Loader(), 100)
    spec = LoadSpec(checkpoint_path="m", iteration_dir="m", iteration=1, format="torch_dist", fingerprint=(1,))
    entry, _ = await registry.load(spec)
    return registry, entry.id


async def _never() -> dict:
    await asyncio.Event().wait()
    return {}


def test_a_head_run_as_get_sends_headers_and_produces_nothing():
    async def main():
        registry, model_id = await _leased()
        produced: list[int] = []
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        response = LeasedStreamingResponse(_pieces(produced), registry.acquire(model_id), headers={"Content-Length": "4096"})
        scope = {"type": "http", "method": "GET", "extensions": {HEAD_EXTENSION: {}}, "asgi": {"spec_version": "2.4"}}
        await response(scope, _never, send)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[1]["body"] == b"" and (b"content-length", b"4096") in sent[0]["headers"]
        assert produced == [] and registry.get(model_id).leases == 0

    asyncio.run(main())


def test_a_send_that_waits_past_the_idle_timeout_ends_the_stream_and_its_lease():
    async def main():
        registry, model_id = await _leased()
        produced: list[int] = []

        async def send(message):
            if message["type"] == "http.response.body":
                await asyncio.Event().wait()  # a client that takes nothing

        response = LeasedStreamingResponse(_pieces(produced), registry.acquire(model_id), idle_timeout=0.2)
        with pytest.raises(StreamStalled):
            await response({"type": "http", "method": "GET", "asgi": {"spec_version": "2.4"}}, _never, send)
        assert produced == [0] and registry.get(model_id).leases == 0

    asyncio.run(main())
