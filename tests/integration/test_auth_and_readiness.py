"""Bearer tokens on /v1 (constant-time compared), open health routes, and readiness (also as
the SDK's ``wait_ready`` sees it, over both clients)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from blocking_async import BlockingAsyncClient

import megaload_client as mc
from megaload.checkpoint import initialize_distributed, shutdown_distributed
from megaload_client import problems

TOKEN = "s3cret-token-for-tests-0123456789"


def test_token_guards_v1_only(start):
    with start(token=TOKEN) as svc:
        assert svc.client.get("/v1/info").status_code == 200  # the client sends the token
        with httpx.Client(base_url=svc.base_url) as anon:
            assert anon.get("/healthz").status_code == 200
            assert anon.get("/readyz").status_code == 200
            assert anon.get("/metrics").status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}):
                for method, url in (("GET", "/v1/info"), ("GET", "/v1/models"), ("POST", "/v1/models"),
                                    ("GET", "/v1/jobs"), ("GET", "/v1/checkpoints/tensors?path=mlm_gpt")):
                    r = anon.request(method, url, headers=headers, json={"checkpoint_path": "mlm_gpt"})
                    assert r.status_code == 401, (headers, url, r.text)
                    assert r.headers["content-type"] == "application/problem+json"
                    assert r.json()["type"] == problems.UNAUTHORIZED
                    assert r.headers["www-authenticate"].startswith("Bearer")
            ok = anon.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json()["auth_required"] is True
            # nothing was loaded by the refused POSTs
            assert ok.json()["models"] == 0


def test_token_file(start, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with start(token_file=token_file) as svc:
        with httpx.Client(base_url=svc.base_url) as anon:
            assert anon.get("/v1/info").status_code == 401
            assert anon.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_not_ready_when_the_context_cannot_be_built(start):
    # another process group already exists in this process: the engine cannot build its own
    initialize_distributed("gloo")
    try:
        with start(wait_ready=False) as svc:
            deadline = time.monotonic() + 30
            while svc.runtime.engine.state.value == "starting" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert svc.client.get("/healthz").status_code == 200
            r = svc.client.get("/readyz")
            assert r.status_code == 503
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == problems.NOT_READY
            assert "failed" in r.json()["detail"]
            r = svc.load("mlm_gpt")
            assert r.status_code == 503 and r.json()["type"] == problems.NOT_READY
            assert svc.client.get("/v1/info").json()["ready"] is False
    finally:
        shutdown_distributed()



# ---------------------------------------------------------------------- the SDK's wait_ready


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("make_client", [mc.Client, BlockingAsyncClient], ids=["sync", "async"])
def test_wait_ready_waits_for_a_server_that_is_not_listening_yet(start, make_client):
    port = _free_port()
    outcome: dict = {}

    def wait() -> None:
        with make_client(f"http://127.0.0.1:{port}", max_retries=0) as client:
            try:
                outcome["state"] = client.wait_ready(60, poll_interval=0.2)
            except BaseException as exc:  # reported below
                outcome["error"] = exc
            outcome["ended"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(4)  # connections are refused meanwhile: the old wait_ready gave up after ~3 s
    assert waiter.is_alive(), f"wait_ready returned before the server started: {outcome}"
    starting = time.monotonic()
    with start(port=port, wait_ready=False):
        waiter.join(60)
    assert "error" not in outcome, outcome
    assert outcome["state"].status == "ready" and outcome["ended"] > starting


@pytest.mark.parametrize("make_client", [mc.Client, BlockingAsyncClient], ids=["sync", "async"])
def test_wait_ready_raises_a_typed_timeout_when_nothing_ever_listens(make_client):
    with make_client(f"http://127.0.0.1:{_free_port()}") as client:
        began = time.monotonic()
        with pytest.raises(mc.ReadyTimeoutError, match="not ready after 1.5s") as caught:
            client.wait_ready(1.5, poll_interval=0.1)
        waited = time.monotonic() - began
    assert isinstance(caught.value, TimeoutError) and caught.value.readiness is None
    assert "could not talk to the service" in str(caught.value)  # why: the last refusal
    assert 1.5 <= waited < 5
