"""Under torchrun: rank 0 serves HTTP and broadcasts each engine command; rank 1 runs it too."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_load_and_save(ckpt_root, copy_checkpoint):
    root = ckpt_root / "torchrun"
    root.mkdir()
    copy_checkpoint("mlm_gpt", root / "mlm")
    (root / "saves").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "megaload", "serve", "--port", "0",
         "--checkpoint-root", str(root), "--save-root", str(root / "saves"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        port = None
        deadline = time.monotonic() + 180
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port, "".join(lines)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)
            info = c.get("/v1/info").json()
            assert info["world_size"] == 2 and info["rank"] == 0
            model = c.post("/v1/models", json={"checkpoint_path": "mlm"})
            assert model.status_code == 201, model.text
            job = c.post(f"/v1/models/{model.json()['id']}/save", json={"path": "out"}).json()
            while job["state"] in ("queued", "running"):
                time.sleep(0.05)
                job = c.get(f"/v1/jobs/{job['id']}").json()
            assert job["state"] == "succeeded", job
            back = c.post("/v1/models", json={"checkpoint_path": "saves/out"})
            assert back.status_code == 201, back.text
            assert back.json()["parameter_count"] == model.json()["parameter_count"]
            bad = c.post("/v1/models", json={"checkpoint_path": "nope"})
            assert bad.status_code == 404
            assert c.get("/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
