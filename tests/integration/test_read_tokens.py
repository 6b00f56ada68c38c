"""Read tokens and the operator's token: a reader (an inference engine pulling weights) may
read everything, the operator (the orchestrator) may do everything, and a reader's write is
refused with 403 naming the scope it needs; the schema declares bearer auth only when a
token is configured.

Before there was one token: whoever pulled weights could also load, evict, save and cancel.
"""

from __future__ import annotations

import httpx
import pytest

from megaload_client import problems

OPERATOR = "operator-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
OTHER_READER = "second-reader-token-0123456789"


def _as(svc, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=svc.base_url, headers=headers, timeout=120)


@pytest.fixture
def svc(start, tmp_path):
    token_file = tmp_path / "read-tokens"
    token_file.write_text(f"\n  {OTHER_READER}  \n\n")
    with start(token=OPERATOR, read_tokens=[READER], read_token_file=token_file) as s:
        yield s


def test_readers_read_everything_and_write_nothing(svc):
    model = svc.load("mlm_gpt")  # the fixture's client holds the operator token
    assert model.status_code == 201, model.text
    model_id = model.json()["id"]
    job = svc.client.post(f"/v1/models/{model_id}/save", json={"path": "reader-test-copy"}).json()
    svc.wait_job(job["id"])
    for token in (READER, OTHER_READER):
        with _as(svc, token) as reader:
            for url in ("/v1/info", "/v1/models", f"/v1/models/{model_id}", f"/v1/models/{model_id}/state_dict",
                        f"/v1/models/{model_id}/state_dict/0", "/v1/jobs", f"/v1/jobs/{job['id']}",
                        "/v1/checkpoints/config?path=mlm_gpt", "/v1/checkpoints/tensors?path=mlm_gpt",
                        "/v1/checkpoints/tokenizer?path=mlm_gpt"):
                assert reader.get(url).status_code == 200, url
            assert reader.head(f"/v1/models/{model_id}/state_dict/0").status_code == 200
            assert reader.head("/v1/models").status_code == 200
            tokenized = reader.post("/v1/checkpoints/tokenize", json={"path": "mlm_gpt", "text": "hello"})
            assert tokenized.status_code in (200, 422), tokenized.text  # 422: the fixture has no tokenizer
            assert tokenized.status_code != 403
            writes = [
                reader.post("/v1/models", json={"checkpoint_path": "bridge_gpt_tied_rope_fp32"}),
                reader.delete(f"/v1/models/{model_id}"),
                reader.post(f"/v1/models/{model_id}/save", json={"path": "reader-copy"}),
                reader.delete(f"/v1/jobs/{job['id']}"),
            ]
            for r in writes:
                assert r.status_code == 403, r.text
                assert r.headers["content-type"] == "application/problem+json"
                body = r.json()
                assert body["type"] == problems.INSUFFICIENT_SCOPE and body["scope"] == "operator"
                assert "read token" in body["detail"]
                assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    # nothing was loaded, evicted or saved by the refused writes
    models = svc.client.get("/v1/models").json()["models"]
    assert [m["id"] for m in models] == [model_id]
    assert not (svc.save_root / "reader-copy").exists()


def test_no_token_or_an_unknown_one_is_401_and_the_operator_does_everything(svc):
    for token in (None, "not-a-token-of-this-service", READER + "x", OPERATOR[:-1]):
        with _as(svc, token) as anon:
            for r in (anon.get("/v1/models"), anon.post("/v1/models", json={"checkpoint_path": "mlm_gpt"})):
                assert r.status_code == 401 and r.json()["type"] == problems.UNAUTHORIZED, (token, r.text)
    with _as(svc, OPERATOR) as operator:
        model_id = operator.post("/v1/models", json={"checkpoint_path": "mlm_gpt"}).json()["id"]
        assert operator.get(f"/v1/models/{model_id}/state_dict").status_code == 200
        assert operator.delete(f"/v1/models/{model_id}").status_code == 204
    assert svc.client.get("/v1/info").json()["auth_required"] is True


def test_bearer_auth_is_declared_only_when_a_token_is_configured(start):
    with start() as svc:
        open_schema = svc.client.get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert not [op for item in open_schema["paths"].values() for op in item.values() if "security" in op]
    with start(token=OPERATOR, read_tokens=[READER]) as svc:
        guarded = svc.client.get("/openapi.json").json()
    assert guarded["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, item in guarded["paths"].items():
        for method, op in item.items():
            # the /v1 routes and the Hub endpoint (weights a reader pulls) take the token
            assert ("security" in op) == path.startswith(("/v1/", "/hf/")), (method, path)
    assert guarded["paths"]["/v1/models"]["get"]["x-megaload-scope"] == "read"
    assert guarded["paths"]["/v1/models"]["post"]["x-megaload-scope"] == "operator"
    assert guarded["paths"]["/v1/checkpoints/tokenize"]["post"]["x-megaload-scope"] == "read"
    assert guarded["paths"]["/hf/api/models/{namespace}/{name}"]["get"]["x-megaload-scope"] == "read"


