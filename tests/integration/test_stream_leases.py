"""Streams hold a read lease on their model: a client that goes away mid-stream releases it,
every answer without a body releases it at once, and eviction waits for active streams.

The model is a generated megatron-core GPT checkpoint of about 90 MiB (``library_models``), so
one shard is far larger than what the sockets and the server's transport buffer can hold:
a client that stops reading really leaves the server mid-stream. Leases are observed as the
service reports them (``active_leases`` of GET /v1/models/{id}); memory release after an
eviction as the registry's used bytes (GET /v1/models).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import xxhash
from library_models import GENERATED_NAME, generate_gpt_checkpoint
from safetensors.torch import load

from megaload_client import problems

WAIT_S = 60.0  # a bound for things that must happen, not a performance figure


@pytest.fixture(scope="module")
def model(service, ckpt_root) -> dict:
    generate_gpt_checkpoint(ckpt_root)
    return _load(service)


def _load(service) -> dict:
    r = service.load(GENERATED_NAME)
    assert r.status_code in (200, 201), r.text
    return r.json()


def _leases(service, model_id: str) -> int:
    r = service.client.get(f"/v1/models/{model_id}")
    assert r.status_code == 200, r.text
    return r.json()["active_leases"]


def _used_bytes(service) -> int:
    return service.client.get("/v1/models").json()["memory"]["used_bytes"]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S:.0f}s: {what}")
        time.sleep(0.02)


def _url(model_id: str, n: int = 0) -> str:
    return f"/v1/models/{model_id}/state_dict/{n}"


def test_a_client_leaving_mid_stream_releases_the_lease(service, model):
    model = _load(service)  # resident again if an earlier test evicted it
    model_id = model["id"]
    shard_size = service.client.head(_url(model_id)).headers["content-length"]
    produced_before = service.metric("megaload_stream_bytes_total")
    with service.client.stream("GET", _url(model_id)) as r:
        assert r.status_code == 200 and r.headers["content-length"] == shard_size
        chunks = r.iter_bytes()  # keep it: a dropped httpx iterator closes the connection
        assert next(chunks)
        assert _leases(service, model_id) == 1
    # leaving the block closes the unfinished response, and with it the connection
    _wait_until(lambda: _leases(service, model_id) == 0, "the lease of the abandoned stream is released")
    produced = service.metric("megaload_stream_bytes_total") - produced_before
    assert produced < int(shard_size), "the server kept producing the shard after the client left"

    used = _used_bytes(service)
    assert service.client.delete(f"/v1/models/{model_id}").status_code == 204
    _wait_until(lambda: _used_bytes(service) == used - model["size_bytes"], "the evicted model's memory is released")


def test_many_streams_hold_one_lease_each_and_leave_none(service, model):
    model_id = _load(service)["id"]
    streams, readers = [], []
    ranges = ("bytes=0-", "bytes=1000-", f"bytes={16 << 20}-{64 << 20}", "bytes=-50000000")
    try:
        for range_header in ranges:
            cm = service.client.stream("GET", _url(model_id), headers={"Range": range_header})
            r = cm.__enter__()
            streams.append(cm)
            assert r.status_code == 206, range_header
            readers.append(r.iter_bytes())
            assert next(readers[-1])
        assert _leases(service, model_id) == len(ranges)
    finally:
        for cm in streams:
            cm.__exit__(None, None, None)
    _wait_until(lambda: _leases(service, model_id) == 0, "every abandoned stream's lease is released")

    # Answers without a body, or whose body is sent in full, release at once.
    etag = service.client.head(_url(model_id)).headers["etag"]
    size = int(service.client.head(_url(model_id)).headers["content-length"])
    answers = [
        service.client.get(f"/v1/models/{model_id}/state_dict"),
        service.client.head(_url(model_id)),
        service.client.get(_url(model_id), headers={"If-None-Match": etag}),
        service.client.get(_url(model_id), headers={"Range": f"bytes={size}-"}),
        service.client.get(_url(model_id), headers={"Range": "bytes=0-99"}),
        service.client.get(_url(model_id, 7)),
        service.client.get(_url(model_id), params={"keys": "("}),
        service.client.get(_url(model_id), params={"dtype": "int9"}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 304, 416, 206, 404, 400, 422]
    assert _leases(service, model_id) == 0


def test_eviction_waits_for_an_active_stream(service, model):
    model = _load(service)
    model_id = model["id"]
    index = service.client.get(f"/v1/models/{model_id}/state_dict").json()
    shard = index["shards"][0]
    with service.client.stream("GET", _url(model_id)) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        received = bytearray(next(chunks))
        used = _used_bytes(service)

        assert service.client.delete(f"/v1/models/{model_id}").status_code == 204  # answered at once
        assert service.client.get(f"/v1/models/{model_id}").status_code == 404
        gone = service.client.get(_url(model_id))
        assert gone.status_code == 404 and gone.json()["type"] == problems.MODEL_NOT_FOUND
        # The stream's lease keeps the weights: give a wrong release every chance to happen.
        time.sleep(0.5)
        assert _used_bytes(service) == used

        for chunk in chunks:
            received += chunk
    assert len(received) == shard["size"]
    tensors = load(bytes(received))
    assert sorted(tensors) == sorted(shard["names"])
    for name, tensor in tensors.items():
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert xxhash.xxh3_64_hexdigest(raw) == index["checksums"][name], name
    _wait_until(lambda: _used_bytes(service) == used - model["size_bytes"], "memory released after the stream")
