"""Shutdown: queued jobs are cancelled and reported, a running save completes, and no
destination is left half-written."""

from __future__ import annotations

from megaload.api.problems import job_body
from megaload_client import problems


def _complete_checkpoint(path) -> bool:
    tracker = path / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        return False
    iter_dir = path / f"iter_{int(tracker.read_text()):07d}"
    return (iter_dir / ".metadata").is_file() and (iter_dir / "common.pt").is_file()


def test_shutdown_with_saves_in_flight(start):
    with start() as svc:
        model_id = svc.load("mlm_gpt").json()["id"]
        submitted = []
        for i in range(8):
            r = svc.client.post(f"/v1/models/{model_id}/save", json={"path": f"at_shutdown_{i}"})
            assert r.status_code == 202, r.text
            submitted.append((r.json()["id"], svc.save_root / f"at_shutdown_{i}"))
        runtime = svc.runtime
    # the server has stopped: look at what the runtime recorded
    assert runtime.engine.state.value == "stopped"
    states = {}
    for job_id, dest in submitted:
        record = runtime.jobs.get(job_id)
        states[job_id] = record.state.value
        if record.state.value == "succeeded":
            assert _complete_checkpoint(dest), dest
        else:
            assert record.state.value == "cancelled", (record.state, record.error)
            error = job_body(record).error  # as GET /v1/jobs/{id} answers it
            assert error is not None and error.type == problems.NOT_READY
            assert "shut down" in error.detail
            assert not dest.exists()
        assert record.finished_at is not None
    assert "cancelled" in states.values()
    assert not [p for p in svc.save_root.iterdir() if ".partial-" in p.name]
