"""Requests the client builds, answers it parses, helpers it shares; no network."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import torch

import megaload_client as mc
from megaload_client import _routes as routes
from megaload_client._drivers import worker_count
from megaload_client._environment import DEFAULT_URL, resolve_token, resolve_url
from megaload_client._handles import job_outcome
from megaload_client._retry import Attempts
from megaload_client._routes import load_request
from megaload_client._shards import merge_shards
from megaload_client.types import Job, JobState


def _built(client: mc.Client, call: routes.Call) -> httpx.Request:
    return client._build_request(client._http, call)


@pytest.fixture
def client(monkeypatch):
    monkeypatch.delenv("MEGALOAD_TOKEN", raising=False)
    with mc.Client("http://svc.example:9000/prefix/", token="s3cret") as c:
        yield c


def test_requests_carry_the_token_and_the_full_url(client):
    request = _built(client, routes.info())
    assert str(request.url) == "http://svc.example:9000/prefix/v1/info"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["user-agent"].startswith("megaload-client/")


def test_token_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("MEGALOAD_TOKEN", "from-env")
    with mc.Client("http://h") as c:
        assert _built(c, routes.info()).headers["authorization"] == "Bearer from-env"
    with mc.Client("http://h", token="arg") as c:
        assert _built(c, routes.info()).headers["authorization"] == "Bearer arg"
    monkeypatch.setenv("MEGALOAD_TOKEN", "")
    with mc.Client("http://h") as c:
        assert "authorization" not in _built(c, routes.info()).headers


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("MEGALOAD_URL", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "http://127.0.0.1:8000"
    monkeypatch.setenv("MEGALOAD_URL", "http://env:1")
    assert resolve_url(None) == "http://env:1"
    assert resolve_url("http://flag:2") == "http://flag:2"
    monkeypatch.delenv("MEGALOAD_TOKEN", raising=False)
    assert resolve_token(None) is None


@pytest.mark.parametrize("url", ["svc:8000", "ftp://x", ""])
def test_base_url_must_be_http(url):
    with pytest.raises(ValueError, match="base_url"):
        mc.Client(url)


@pytest.mark.parametrize("make", [mc.Client, mc.AsyncClient])
def test_without_a_url_both_clients_use_the_command_lines_default(make, monkeypatch):
    monkeypatch.delenv("MEGALOAD_URL", raising=False)
    assert make().base_url == DEFAULT_URL == resolve_url(None)
    monkeypatch.setenv("MEGALOAD_URL", "http://svc.example:9000/")
    assert make().base_url == "http://svc.example:9000" and make(None).base_url == "http://svc.example:9000"
    assert make("http://given:1").base_url == "http://given:1"  # an argument wins over the environment
    monkeypatch.setenv("MEGALOAD_URL", "svc.example:9000")
    with pytest.raises(ValueError, match="base_url"):  # a bad environment value is refused, not ignored
        make()


def test_ids_cannot_escape_their_path_segment(client):
    request = _built(client, routes.get_model("../jobs/x?y=1"))
    assert request.url.raw_path == b"/prefix/v1/models/..%2Fjobs%2Fx%3Fy%3D1"


def test_state_dict_query_repeats_keys_and_is_shared_by_index_and_shards(client):
    query = routes.state_dict_query("m1", "bf16", ["decoder.layers.0.", "embedding"], 1 << 20)
    index = _built(client, routes.state_dict_index(query))
    shard = _built(client, routes.shard(query, 3))
    assert index.url.path == "/prefix/v1/models/m1/state_dict"
    assert shard.url.path == "/prefix/v1/models/m1/state_dict/3"
    for request in (index, shard):
        assert request.url.params.get_list("keys") == ["decoder.layers.0.", "embedding"]
        assert request.url.params["dtype"] == "bf16"
        assert request.url.params["max_shard_bytes"] == str(1 << 20)
    assert routes.state_dict_params(keys="one.") == (("keys", "one."),)
    assert routes.state_dict_params() == ()


def test_hf_names_go_to_index_and_shards_and_hub_paths_stay_in_their_segments(client):
    params = routes.state_dict_params("bf16", None, None, "hf")
    assert params == (("names", "hf"), ("dtype", "bf16"))
    assert routes.state_dict_params(names="megatron") == ()  # the default: older services understand it
    with pytest.raises(ValueError, match="names"):
        routes.state_dict_params(names="HF")
    info = _built(client, routes.hub_model_info("m/1"))
    assert info.url.raw_path == b"/prefix/hf/api/models/megaload/m%2F1/revision/main"
    file = _built(client, routes.hub_file("m1", "abc", "tokenizer config.json"))
    assert file.url.raw_path == b"/prefix/hf/megaload/m1/resolve/abc/tokenizer%20config.json"


def test_load_body_leaves_out_unset_fields_and_is_retryable(client):
    call = routes.load_model(load_request("/ckpt/a", None, "bf16", {"tensor_model_parallel_size": 1}, False, wait=True))
    body = json.loads(_built(client, call).content)
    assert body == {"checkpoint_path": "/ckpt/a", "dtype": "bf16", "mp_overrides": {"tensor_model_parallel_size": 1},
                    "pin": False, "wait": True}
    assert call.retryable  # a repeated load gives the same model


def test_which_calls_are_retryable():
    assert routes.info().retryable
    assert routes.unload_model("m").retryable
    assert routes.cancel_job("j").retryable
    assert routes.tokenize(mc.types.TokenizeRequest(path="/p", text="hi")).retryable
    save = routes.save_model("m", mc.types.SaveModelRequest(path="/out"))
    assert save.method == "POST" and not save.retryable


def test_load_arguments_are_validated_before_sending():
    with pytest.raises(ValueError, match="tensor_model_parallel_size"):
        load_request("/c", None, None, {"tensor_model_parallel_size": 0}, False, wait=True)
    with pytest.raises(ValueError, match="not_a_field"):
        load_request("/c", None, None, {"not_a_field": 1}, False, wait=True)
    with pytest.raises(ValueError, match="model_type"):
        load_request("/c", "bert", None, None, False, wait=True)


def _answer(status: int, body: dict, method: str = "GET") -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request(method, "http://x/"))


def _job(**update) -> dict:
    base = {"id": "j1", "kind": "save", "state": "running", "progress": 0.5, "created_at": "2026-01-01T00:00:00Z"}
    base.update(update)
    return base


def test_load_answer_is_a_model_or_a_job():
    model = {
        "id": "m1", "checkpoint_path": "/c", "iteration_dir": "/c/iter_0000001", "iteration": 1,
        "format": "megatron_bridge", "dtype": "float32", "parameter_count": 10, "size_bytes": 40, "pinned": False,
        "loaded_at": "2026-01-01T00:00:00Z", "last_used_at": "2026-01-01T00:00:00Z", "load_seconds": 0.1,
    }
    call = routes.load_model(load_request("/c", None, None, None, False, wait=True))
    assert isinstance(call.parse(_answer(201, model, "POST")), mc.ModelInfo)
    assert isinstance(call.parse(_answer(200, model, "POST")), mc.ModelInfo)
    assert isinstance(call.parse(_answer(202, _job(kind="load"), "POST")), mc.Job)


def test_readiness_503_is_an_answer_not_an_error(client):
    call = routes.ready()
    assert 503 in call.ok
    assert call.parse(_answer(503, {"status": "starting", "detail": "engine"})).status == "starting"
    problem = {"type": "urn:megaload:problem:not-ready", "title": "Service not ready", "status": 503, "detail": "warming"}
    state = client._result(call, _answer(503, problem))
    assert state.status == "starting" and state.detail == "warming"
    assert _delay(client, call, _answer(503, problem), 0) is None  # not retried


def test_error_statuses_raise_typed_errors_and_transient_ones_wait(client):
    problem = {"type": "urn:megaload:problem:model-not-found", "title": "Model not found", "status": 404, "detail": "no m"}
    with pytest.raises(mc.ModelNotFoundError, match="no m"):
        client._result(routes.get_model("m"), _answer(404, problem))
    busy = httpx.Response(503, headers={"retry-after": "1"}, request=httpx.Request("GET", "http://x/"))
    assert _delay(client, routes.info(), busy, 0) == 1.0
    assert _delay(client, routes.info(), busy, client.max_retries) is None
    save = routes.save_model("m", mc.types.SaveModelRequest(path="/o"))
    assert _delay(client, save, busy, 0) is None


def _delay(client: mc.Client, call: routes.Call, response: httpx.Response, retries: int) -> float | None:
    """The wait before repeating ``call`` after ``response`` when ``retries`` were made."""
    attempts = Attempts(client.retry_policy, call)
    attempts.retries = retries
    return attempts.after_status(response)


def test_job_outcome():
    assert job_outcome(Job.model_validate(_job(state="succeeded", progress=1.0))).state is JobState.SUCCEEDED
    failed = Job.model_validate(
        _job(state="failed", error={"title": "Checkpoint already exists", "status": 409, "detail": "/out exists"})
    )
    with pytest.raises(mc.JobFailedError, match="/out exists") as caught:
        job_outcome(failed)
    assert caught.value.job.error.status == 409
    with pytest.raises(mc.JobCancelledError):
        job_outcome(Job.model_validate(_job(state="cancelled")))


def test_resident_job_handle_is_already_done(client):
    info = mc.ModelInfo(
        id="m1", checkpoint_path="/c", iteration_dir="/c/iter_1", iteration=1, format="megatron_lm", dtype="bf16",
        parameter_count=1, size_bytes=2, pinned=False, loaded_at=datetime.now(UTC),
        last_used_at=datetime.now(UTC), load_seconds=0.0,
    )
    handle = mc.JobHandle.resident(client, info)
    assert handle.done and handle.wait(timeout=0).result.model_id == "m1"
    assert handle._model_id() == "m1"


def test_merge_shards_refuses_duplicate_keys():
    a, b = torch.zeros(1), torch.ones(1)
    assert list(merge_shards([{"x": a}, {"y": b}])) == ["x", "y"]
    with pytest.raises(mc.IntegrityError, match="more than one shard"):
        merge_shards([{"x": a}, {"x": b}])


def test_worker_count():
    assert worker_count(4, 2) == 2
    assert worker_count(4, 10) == 4
    with pytest.raises(ValueError, match="max_workers"):
        worker_count(0, 3)
