"""The byte budget: LRU eviction of unpinned models, pinning, 507 before anything is read.

Fixture sizes (float32 bytes of their tensors, from the checkpoint metadata): mlm_gpt 427,264;
bridge_gpt_tied_rope_fp32 (tied embeddings, stored once in the checkpoint) is larger.
"""

from __future__ import annotations

from megaload_client import problems


def _tensor_bytes(service, path: str) -> int:
    return service.client.get("/v1/checkpoints/tensors", params={"path": path}).json()["total_bytes"]


def test_lru_eviction_makes_room(start):
    with start(memory_budget="1000000") as svc:
        mlm = svc.load("mlm_gpt").json()
        half = svc.load("mlm_gpt", dtype="bf16").json()  # 213,632 bytes
        assert svc.client.get("/v1/models").json()["memory"]["used_bytes"] == mlm["size_bytes"] + half["size_bytes"]
        svc.client.get(f"/v1/models/{mlm['id']}")  # a GET is not a use: LRU order stays mlm, half
        svc.load("mlm_gpt")  # a repeated load is a use: LRU order half, mlm
        evictions = svc.metric("megaload_evictions_total", reason="lru")
        bridge = svc.load("bridge_gpt_tied_rope_fp32")
        assert bridge.status_code == 201, bridge.text
        # needed room: the least recently used (half) goes first, then mlm if still short
        assert svc.client.get(f"/v1/models/{half['id']}").status_code == 404
        memory = svc.client.get("/v1/models").json()["memory"]
        assert memory["used_bytes"] <= 1_000_000
        assert svc.metric("megaload_evictions_total", reason="lru") > evictions
        assert svc.metric("megaload_cache_bytes") == memory["used_bytes"]


def test_pinned_models_stay_and_507_reads_nothing(start):
    with start(memory_budget="700000") as svc:
        pinned = svc.load("mlm_gpt", pin=True)
        assert pinned.status_code == 201 and pinned.json()["pinned"] is True
        loads = svc.metric("megaload_checkpoint_loads_total", outcome="success")
        needed = _tensor_bytes(svc, "bridge_gpt_tied_rope_fp32")
        r = svc.load("bridge_gpt_tied_rope_fp32")
        assert r.status_code == 507, r.text
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert body["type"] == problems.INSUFFICIENT_MEMORY
        assert body["bytes_needed"] == needed
        assert body["bytes_available"] == 700_000 - pinned.json()["size_bytes"]
        assert str(needed) in body["detail"]
        # nothing was read, the pinned model is intact
        assert svc.metric("megaload_checkpoint_loads_total", outcome="success") == loads
        assert svc.client.get(f"/v1/models/{pinned.json()['id']}").status_code == 200
        assert svc.client.get("/v1/models").json()["memory"]["reserved_bytes"] == 0
        # unpinned: evicting the pinned model by request makes room
        assert svc.client.delete(f"/v1/models/{pinned.json()['id']}").status_code == 204
        assert svc.load("bridge_gpt_tied_rope_fp32").status_code == 201


def test_budget_smaller_than_any_model(start):
    with start(memory_budget="1000") as svc:
        r = svc.load("mlm_gpt")
        assert r.status_code == 507
        assert r.json()["bytes_needed"] == _tensor_bytes(svc, "mlm_gpt")
        assert r.json()["bytes_available"] == 1000
        assert svc.metric("megaload_checkpoint_loads_total", outcome="success") == 0
        assert svc.client.get("/readyz").status_code == 200


def test_concurrent_distinct_loads_all_succeed(start, copy_checkpoint, ckpt_root):
    """Ten distinct checkpoints loaded at once, a budget that holds two of them: every load
    fits once those before it finish and are evicted, so every one succeeds (none is 507),
    and the pinned one stays."""
    import threading

    import httpx

    names = [f"mlm_concurrent_{i}" for i in range(10)]
    for name in names:
        if not (ckpt_root / name).exists():
            copy_checkpoint("mlm_gpt", ckpt_root / name)
    pinned = names[6]
    with start(memory_budget="1000000") as svc:
        answers: dict[str, httpx.Response] = {}
        barrier = threading.Barrier(len(names))

        def load(name: str) -> None:
            with httpx.Client(base_url=svc.base_url, timeout=300) as c:
                barrier.wait()
                answers[name] = c.post("/v1/models", json={"checkpoint_path": name, "pin": name == pinned})

        threads = [threading.Thread(target=load, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = {n: answers[n].status_code for n in names}
        print("statuses:", sorted(statuses.values()), "pinned:", statuses[pinned])
        assert set(statuses.values()) == {201}, {n: answers[n].text[:200] for n in names if statuses[n] != 201}
        models = {m["checkpoint_path"]: m for m in svc.client.get("/v1/models").json()["models"]}
        assert pinned in models and models[pinned]["pinned"] is True
        memory = svc.client.get("/v1/models").json()["memory"]
        assert memory["used_bytes"] <= 1_000_000 and memory["reserved_bytes"] == 0
        assert svc.metric("megaload_checkpoint_loads_total", outcome="success") == 10
