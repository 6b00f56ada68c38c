"""Jobs: loads with wait=false and saves; state, Location, results, errors, cancellation."""

from __future__ import annotations

from megaload_client import problems


def _complete_checkpoint(path) -> bool:
    tracker = path / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        return False
    iter_dir = path / f"iter_{int(tracker.read_text()):07d}"
    return (iter_dir / ".metadata").is_file() and (iter_dir / "common.pt").is_file()


def test_load_job(service):
    r = service.load("bridge_gpt_tied_rope_fp32", dtype="fp16", wait=False)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["kind"] == "load" and job["state"] in ("queued", "running", "succeeded")
    assert job["target"].endswith("iter_0000000")
    done = service.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0
    # the bytes of tensor records the load read, all of them (the job keeps the last report)
    data_bytes = sum(f.stat().st_size for f in (service.ckpt_root / "bridge_gpt_tied_rope_fp32").rglob("*.distcp"))
    assert 0 < done["bytes_read"] == done["bytes_to_read"] <= data_bytes
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    model = done["result"]["model"]
    assert done["result"]["model_id"] == model["id"] == done["model_id"]
    assert model["dtype"] == "float16"
    assert service.client.get(f"/v1/models/{model['id']}").status_code == 200
    assert job["id"] in [j["id"] for j in service.client.get("/v1/jobs").json()["jobs"]]


def test_failed_load_job_reports_the_problem(service, copy_checkpoint):
    bad = copy_checkpoint("mlm_gpt", service.ckpt_root / "mlm_job_truncated")
    shard = sorted((bad / "iter_0000010").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    r = service.load("mlm_job_truncated", wait=False)
    assert r.status_code == 202
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "failed"
    assert done["error"]["type"] == problems.CORRUPT_CHECKPOINT
    assert done["error"]["status"] == 422 and done["error"]["detail"]
    assert done["result"] is None
    assert service.client.get("/readyz").status_code == 200


def test_save_job_round_trip(service):
    source = service.load("mlm_gpt").json()
    r = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "round_trip"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["kind"] == "save" and job["model_id"] == source["id"]
    done = service.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    dest = service.save_root / "round_trip"
    assert done["result"]["path"] == str(dest.resolve())
    assert _complete_checkpoint(dest)
    assert not [p for p in service.save_root.iterdir() if ".partial-" in p.name]
    # the saved checkpoint loads back (the save root is inside the checkpoint root) with the same tensors
    back = service.load("saves/round_trip")
    assert back.status_code == 201, back.text
    back = back.json()
    assert back["format"] == "megatron_bridge"
    assert back["parameter_count"] == source["parameter_count"]
    assert back["size_bytes"] == source["size_bytes"]
    # a second save to the same place needs overwrite
    again = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "round_trip"})
    assert again.status_code == 409
    assert again.json()["type"] == problems.CHECKPOINT_EXISTS
    assert "overwrite" in again.json()["detail"]
    over = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "round_trip", "overwrite": True})
    assert over.status_code == 202
    assert service.wait_job(over.json()["id"])["state"] == "succeeded"
    assert _complete_checkpoint(dest)


def test_save_refusals(service):
    source = service.load("mlm_gpt").json()
    junk = service.save_root / "not_a_checkpoint"
    junk.mkdir(exist_ok=True)
    (junk / "notes.txt").write_text("keep me")
    r = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "not_a_checkpoint", "overwrite": True})
    assert r.status_code == 409 and r.json()["type"] == problems.CHECKPOINT_EXISTS
    assert (junk / "notes.txt").read_text() == "keep me"
    r = service.client.post("/v1/models/0123456789abcdef01234567/save", json={"path": "x"})
    assert r.status_code == 404 and r.json()["type"] == problems.MODEL_NOT_FOUND
    r = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "x", "ckpt_format": "zarr"})
    assert r.status_code == 422 and r.json()["type"] == problems.VALIDATION
    r = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "x", "hf_tokenizer_path": "no/such/tok"})
    assert r.status_code == 404 and r.json()["type"] == problems.CHECKPOINT_NOT_FOUND
    r = service.client.post(f"/v1/models/{source['id']}/save", json={"path": "x", "extra": 1})
    assert r.status_code == 422


def test_job_lookup_and_cancel_errors(service):
    r = service.client.get("/v1/jobs/nope")
    assert r.status_code == 404 and r.json()["type"] == problems.JOB_NOT_FOUND
    assert service.client.delete("/v1/jobs/nope").status_code == 404
    r = service.load("mlm_gpt", wait=False)
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "succeeded" and done["result"]["created"] in (True, False)
    r = service.client.delete(f"/v1/jobs/{done['id']}")
    assert r.status_code == 409 and r.json()["type"] == problems.JOB_NOT_CANCELLABLE


def test_cancel_a_queued_job(service, copy_checkpoint):
    # a queue of distinct loads keeps the engine busy; the last one is still queued when cancelled
    names = []
    for i in range(6):
        name = f"mlm_queue_{i}"
        if not (service.ckpt_root / name).exists():
            copy_checkpoint("mlm_gpt", service.ckpt_root / name)
        names.append(name)
    loads_before = service.metric("megaload_checkpoint_loads_total", outcome="success")
    jobs = [service.load(name, wait=False).json() for name in names]
    last = jobs[-1]
    r = service.client.delete(f"/v1/jobs/{last['id']}")
    assert r.status_code == 204, r.text
    cancelled = service.client.get(f"/v1/jobs/{last['id']}").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    for job in jobs[:-1]:
        assert service.wait_job(job["id"])["state"] == "succeeded"
    assert service.metric("megaload_checkpoint_loads_total", outcome="success") == loads_before + len(jobs) - 1
    assert service.client.get(f"/v1/models/{last['model_id']}").status_code == 404
    assert service.metric("megaload_jobs", kind="load", state="cancelled") >= 1


def test_cancelled_save_returns_its_lease(service, copy_checkpoint):
    model = service.load("mlm_gpt", dtype="bf16").json()
    names = []
    for i in range(4):
        name = f"mlm_busy_{i}"
        if not (service.ckpt_root / name).exists():
            copy_checkpoint("mlm_gpt", service.ckpt_root / name)
        names.append(name)
    busy = [service.load(name, dtype="fp16", wait=False).json() for name in names]
    save = service.client.post(f"/v1/models/{model['id']}/save", json={"path": "never_written"})
    assert save.status_code == 202
    assert service.client.get(f"/v1/models/{model['id']}").json()["active_leases"] == 1
    assert service.client.delete(f"/v1/jobs/{save.json()['id']}").status_code == 204
    for job in busy:
        service.wait_job(job["id"])
    assert service.client.get(f"/v1/models/{model['id']}").json()["active_leases"] == 0
    assert not (service.save_root / "never_written").exists()
    assert service.client.delete(f"/v1/models/{model['id']}").status_code == 204
