"""POST/GET/DELETE /v1/models against real fixtures: ids, idempotency, coalescing, dtypes,
new iterations, corrupt checkpoints."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
from safetensors.torch import load_file

from megaload_client import problems

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"


def _reference(name: str) -> dict:
    return load_file(str(FIXTURES_DIR / name / "reference_state_dict.safetensors"))


def test_load_then_repeat_is_idempotent(service):
    first = service.load("mlm_gpt")
    assert first.status_code == 201, first.text
    model = first.json()
    assert first.headers["location"] == f"/v1/models/{model['id']}"
    again = service.load("mlm_gpt")
    assert again.status_code == 200
    assert again.json()["id"] == model["id"]
    # the same checkpoint named differently (absolute, iteration dir) is the same model
    absolute = service.load(str(service.ckpt_root / "mlm_gpt"))
    assert absolute.status_code == 200 and absolute.json()["id"] == model["id"]
    by_iter = service.load("mlm_gpt/iter_0000010")
    assert by_iter.status_code == 200 and by_iter.json()["id"] == model["id"]


def test_model_description_matches_the_checkpoint(service):
    model = service.load("mlm_gpt").json()
    ref = _reference("mlm_gpt")
    assert model["iteration"] == 10
    assert model["format"] == "megatron_lm"
    assert model["iteration_dir"] == str((service.ckpt_root / "mlm_gpt" / "iter_0000010").resolve())
    assert model["dtype"] == "float32"
    assert model["model_type"] == "gpt"
    assert model["parameter_count"] == sum(t.numel() for t in ref.values())
    assert model["size_bytes"] == sum(t.numel() * t.element_size() for t in ref.values())
    assert model["pinned"] is False
    got = service.client.get(f"/v1/models/{model['id']}")
    assert got.status_code == 200 and got.json()["id"] == model["id"]
    listed = service.client.get("/v1/models").json()
    assert model["id"] in [m["id"] for m in listed["models"]]
    assert listed["memory"]["used_bytes"] >= model["size_bytes"]


def test_bridge_fixture_loads(service):
    r = service.load("bridge_gpt_tied_rope_fp32")
    assert r.status_code in (200, 201), r.text
    model = r.json()
    assert model["format"] == "megatron_bridge" and model["iteration"] == 0
    ref = _reference("bridge_gpt_tied_rope_fp32")
    # tied embeddings: the output layer shares the embedding's storage, counted once
    assert model["size_bytes"] <= sum(t.numel() * t.element_size() for t in ref.values())
    assert model["size_bytes"] > 0


def test_dtype_and_options_make_a_different_model(service):
    fp32 = service.load("mlm_gpt").json()
    bf16 = service.load("mlm_gpt", dtype="bf16")
    assert bf16.status_code == 201, bf16.text
    body = bf16.json()
    assert body["id"] != fp32["id"]
    assert body["dtype"] == "bfloat16"
    assert body["size_bytes"] == fp32["size_bytes"] // 2
    # other spellings of the same dtype are the same model
    again = service.load("mlm_gpt", dtype="bfloat16")
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    # a model_type other than the inferred one is another model (422 here, without the Mamba
    # kernels), never the resident GPT (200)
    mamba = service.load("mlm_gpt", model_type="mamba")
    assert mamba.status_code != 200 and mamba.json().get("id") != fp32["id"], mamba.text


def _resident(service, name: str) -> list[dict]:
    where = str((service.ckpt_root / name).resolve())
    return [m for m in service.client.get("/v1/models").json()["models"] if m["iteration_dir"].startswith(where + "/")
            or m["iteration_dir"] == where]


def test_options_spelt_out_as_their_defaults_are_the_same_model(service):
    """The id follows the options the load applies: ``model_type="gpt"`` for a Megatron-LM GPT
    checkpoint (inferred when omitted), its own dtype, the service's parallel sizes."""
    for name in ("mlm_gpt", "bridge_gpt_tied_rope_fp32"):
        for m in _resident(service, name):
            assert service.client.delete(f"/v1/models/{m['id']}").status_code == 204
    inferred = service.load("mlm_gpt")
    assert inferred.status_code == 201, inferred.text
    model_id = inferred.json()["id"]
    for body in (
        {"model_type": "gpt"},
        {"dtype": "float32"},
        {"dtype": "fp32", "model_type": "gpt"},
        {"mp_overrides": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1}},
        {"mp_overrides": {"context_parallel_size": 1, "expert_model_parallel_size": 1, "sequence_parallel": False}},
    ):
        again = service.load("mlm_gpt", **body)
        assert again.status_code == 200 and again.json()["id"] == model_id, (body, again.text)
    listed = _resident(service, "mlm_gpt")
    assert [m["id"] for m in listed] == [model_id]
    assert listed[0]["model_type"] == "gpt" and listed[0]["dtype"] == "float32"
    # Megatron Bridge: the provider builds the model and model_type is not used
    bridge = service.load("bridge_gpt_tied_rope_fp32")
    assert bridge.status_code == 201, bridge.text
    typed = service.load("bridge_gpt_tied_rope_fp32", model_type="gpt", dtype="float32")
    assert typed.status_code == 200 and typed.json()["id"] == bridge.json()["id"]
    assert [m["id"] for m in _resident(service, "bridge_gpt_tied_rope_fp32")] == [bridge.json()["id"]]


def test_pin_on_repeat_pins(service):
    r = service.load("mlm_gpt", dtype="fp16", pin=True)
    assert r.status_code == 201 and r.json()["pinned"] is True
    model_id = r.json()["id"]
    service.client.delete(f"/v1/models/{model_id}")


def test_delete_evicts(service):
    model_id = service.load("mlm_gpt", dtype="float16").json()["id"]
    r = service.client.delete(f"/v1/models/{model_id}")
    assert r.status_code == 204
    r = service.client.get(f"/v1/models/{model_id}")
    assert r.status_code == 404
    assert r.json()["type"] == problems.MODEL_NOT_FOUND
    assert model_id in r.json()["detail"]
    assert service.client.delete(f"/v1/models/{model_id}").status_code == 404
    # loading again reads it again
    assert service.load("mlm_gpt", dtype="float16").status_code == 201


def test_twenty_concurrent_identical_loads_read_once(service):
    path = "bridge_gpt_tied_rope_fp32"
    resident = service.load(path)
    if resident.status_code in (200, 201):
        service.client.delete(f"/v1/models/{resident.json()['id']}")
    before = service.metric("megaload_checkpoint_loads_total", outcome="success")
    barrier = threading.Barrier(20)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(base_url=service.base_url, timeout=120) as c:
            barrier.wait()
            r = c.post("/v1/models", json={"checkpoint_path": path, "dtype": "bf16"})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 20
    assert all(r.status_code in (200, 201) for r in results), [r.text for r in results if r.status_code >= 300]
    assert sorted(r.status_code for r in results).count(201) == 1
    assert len({r.json()["id"] for r in results}) == 1
    after = service.metric("megaload_checkpoint_loads_total", outcome="success")
    assert after - before == 1


def test_newer_iteration_on_disk_is_a_new_model(service, copy_checkpoint):
    ckpt = copy_checkpoint("mlm_gpt", service.ckpt_root / "mlm_growing")
    old = service.load("mlm_growing")
    assert old.status_code == 201
    shutil.copytree(ckpt / "iter_0000010", ckpt / "iter_0000020")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("20")
    new = service.load("mlm_growing")
    assert new.status_code == 201, new.text
    assert new.json()["id"] != old.json()["id"]
    assert new.json()["iteration"] == 20
    # both are resident
    assert service.client.get(f"/v1/models/{old.json()['id']}").status_code == 200


def _truncate_distcp(ckpt: Path) -> None:
    shard = sorted((ckpt / "iter_0000010").glob("*.distcp"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])


def test_corrupt_checkpoint_is_422_and_the_service_stays_ready(service, copy_checkpoint):
    good = service.load("mlm_gpt").json()
    failures_before = service.metric("megaload_checkpoint_loads_total", outcome="failure")

    truncated = copy_checkpoint("mlm_gpt", service.ckpt_root / "mlm_truncated")
    _truncate_distcp(truncated)
    r = service.load("mlm_truncated")
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == problems.CORRUPT_CHECKPOINT
    assert r.json()["detail"]
    assert service.metric("megaload_checkpoint_loads_total", outcome="failure") == failures_before + 1

    no_meta = copy_checkpoint("mlm_gpt", service.ckpt_root / "mlm_no_metadata")
    (no_meta / "iter_0000010" / ".metadata").unlink()
    r = service.load("mlm_no_metadata")
    assert r.status_code == 422
    assert r.json()["type"] == problems.CORRUPT_CHECKPOINT
    assert ".metadata" in r.json()["detail"]

    garbage_meta = copy_checkpoint("mlm_gpt", service.ckpt_root / "mlm_garbage_metadata")
    (garbage_meta / "iter_0000010" / ".metadata").write_bytes(b"\x80\x04not a pickle at all")
    r = service.load("mlm_garbage_metadata")
    assert r.status_code == 422, r.text
    assert r.json()["type"] in (problems.CORRUPT_CHECKPOINT, problems.UNSAFE_CHECKPOINT)

    # still ready, the good model still served, nothing leaked into the cache
    assert service.client.get("/readyz").status_code == 200
    assert service.client.get(f"/v1/models/{good['id']}").status_code == 200
    assert service.load("mlm_gpt").status_code == 200
    ids = [m["id"] for m in service.client.get("/v1/models").json()["models"]]
    assert all("truncated" not in m["checkpoint_path"] for m in service.client.get("/v1/models").json()["models"])
    assert good["id"] in ids
    assert service.client.get("/v1/models").json()["memory"]["reserved_bytes"] == 0


def test_load_errors_are_typed(service):
    cases = [
        ({"checkpoint_path": "does/not/exist"}, 404, problems.CHECKPOINT_NOT_FOUND),
        ({"checkpoint_path": "saves"}, 422, problems.NOT_A_CHECKPOINT),
        ({"checkpoint_path": "mlm_gpt", "dtype": "int7"}, 422, problems.INVALID_DTYPE),
        ({"checkpoint_path": "mlm_gpt", "model_type": "bert"}, 422, problems.VALIDATION),
        ({"checkpoint_path": "mlm_gpt", "pin": "maybe"}, 422, problems.VALIDATION),
        ({"checkpoint_path": ""}, 422, problems.VALIDATION),
        ({"checkpoint_path": 7}, 422, problems.VALIDATION),
        ({}, 422, problems.VALIDATION),
        ({"checkpoint_path": "mlm_gpt", "mp_overrides": {"tensor_model_parallel_size": 2}}, 422, problems.INCOMPATIBLE_CONFIG),
        ({"checkpoint_path": "mlm_gpt", "mp_overrides": {"tensor_model_parallel_size": 0}}, 422, problems.VALIDATION),
        ({"checkpoint_path": "mlm_gpt", "mp_overrides": {"bogus": 1}}, 422, problems.VALIDATION),
    ]
    for body, status, type_ in cases:
        r = service.client.post("/v1/models", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == type_, (body, r.json())
        assert r.json()["status"] == status and r.json()["title"] and r.json()["detail"]
    r = service.client.post("/v1/models", json={"checkpoint_path": "mlm_gpt", "mp_overrides": {"tensor_model_parallel_size": 2}})
    assert r.json()["field"] == "mp_overrides.tensor_model_parallel_size"
    r = service.client.post("/v1/models", json={"checkpoint_path": "mlm_gpt", "dtype": "int7"})
    assert "int7" in r.json()["detail"]
    r = service.client.post("/v1/models", json={"checkpoint_path": "mlm_gpt", "surprise": True})
    assert r.json()["errors"][0]["loc"] == ["body", "surprise"]
    assert service.client.get("/readyz").status_code == 200
