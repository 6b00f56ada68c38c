"""Health, readiness, metrics, request ids, routing errors and the OpenAPI document."""

from __future__ import annotations

from megaload_client import problems

PROBLEM_JSON = "application/problem+json"


def test_healthz_and_readyz(service):
    r = service.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = service.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_info_describes_the_service(service):
    info = service.client.get("/v1/info").json()
    assert info["ready"] is True
    assert info["backend"] == "gloo" and info["device"] == "cpu"
    assert info["world_size"] == 1 and info["rank"] == 0
    assert info["checkpoint_roots"] == [str(service.ckpt_root.resolve())]
    assert info["save_roots"] == [str(service.save_root.resolve())]
    assert info["memory"]["budget_bytes"] == 1024**3
    assert info["auth_required"] is False
    assert info["versions"]["torch"] and info["versions"]["megatron_core"]


def test_request_id_is_echoed_or_made(service):
    r = service.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = service.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert made != "bad id with spaces" and len(made) == 32
    # problems carry it too
    r = service.client.get("/v1/models/nope", headers={"X-Request-ID": "rid-42"})
    assert r.json()["request_id"] == "rid-42"


def test_unknown_route_and_method_are_problems(service):
    r = service.client.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["type"] == problems.NOT_FOUND
    r = service.client.put("/v1/models")
    assert r.status_code == 405
    assert r.json()["type"] == problems.METHOD_NOT_ALLOWED


def test_malformed_json_body_is_a_validation_problem(service):
    r = service.client.post("/v1/models", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["type"] == problems.VALIDATION


def test_oversized_body_is_refused_before_reading(service):
    r = service.client.post(
        "/v1/checkpoints/tokenize",
        content=b"x" * (9 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["type"] == problems.PAYLOAD_TOO_LARGE
    assert r.json()["limit"] == 8 * 1024 * 1024


def test_metrics_exposition(service):
    service.client.get("/healthz")
    r = service.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "megaload_checkpoint_loads_total",
        "megaload_load_seconds",
        "megaload_checkpoint_bytes_read_total",
        "megaload_cache_bytes",
        "megaload_cache_entries",
        "megaload_evictions_total",
        "megaload_stream_bytes_total",
        "megaload_jobs",
        "megaload_http_requests_total",
    ):
        assert name in text, name
    assert service.metric("megaload_http_requests_total", route="/healthz", status="200", method="GET") >= 1
    assert service.metric("megaload_cache_budget_bytes") == 1024**3


def test_openapi_documents_every_route_with_models_and_problems(service):
    spec = service.client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/info", "get"),
        ("/v1/checkpoints/config", "get"),
        ("/v1/checkpoints/tensors", "get"),
        ("/v1/checkpoints/tokenizer", "get"),
        ("/v1/checkpoints/tokenize", "post"),
        ("/v1/models", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model_id}", "get"),
        ("/v1/models/{model_id}", "delete"),
        ("/v1/models/{model_id}/save", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}", "delete"),
    }
    found = {(path, method) for path, ops in paths.items() for method in ops}
    assert expected <= found
    schemas = spec["components"]["schemas"]
    assert "ProblemDetail" in schemas and "HTTPValidationError" not in schemas
    for path, method in expected:
        op = paths[path][method]
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, (path, method)
        if path.startswith("/v1"):
            errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
            assert "401" in errors and "500" in errors, (path, method)
            for resp in errors.values():
                assert resp["content"]["application/problem+json"]["schema"]["$ref"].endswith("/ProblemDetail")
    load = paths["/v1/models"]["post"]
    assert load["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LoadModelRequest")
    assert {"200", "201", "202", "403", "404", "422", "503", "507"} <= set(load["responses"])
    assert load["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    save = paths["/v1/models/{model_id}/save"]["post"]
    assert {"202", "403", "404", "409"} <= set(save["responses"])
    assert {"204", "404", "409"} <= set(paths["/v1/jobs/{job_id}"]["delete"]["responses"])
