"""A real megaload server for integration tests.

``uvicorn`` runs the real app (real engine on gloo, real registry) in a thread on 127.0.0.1,
port 0; tests talk HTTP to it with httpx. torch.distributed's default group is per process,
so only one server runs at a time: each module uses either the module-scoped ``service`` or
servers it starts itself with ``start_service``.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

from megaload.app import create_app
from megaload.server import uvicorn_config
from megaload.settings import Settings

TOKEN = "test-token-0123456789abcdef"


class ThreadedServer(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a thread)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
        yield


@dataclass
class Service:
    base_url: str
    client: httpx.Client
    app: Any
    settings: Settings
    ckpt_root: Path
    save_root: Path

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def load(self, path: str, **body: Any) -> httpx.Response:
        return self.client.post("/v1/models", json={"checkpoint_path": path, **body})

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            job = r.json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish within {timeout}s")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0.0 when absent)."""
        text = self.client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


def copy_checkpoint(name: str, dest: Path) -> Path:
    """A writable copy of ``tests/fixtures/<name>/checkpoint`` at ``dest``."""
    shutil.copytree(FIXTURES_DIR / name / "checkpoint", dest)
    return dest


@pytest.fixture(name="copy_checkpoint")
def copy_checkpoint_fixture():
    """``copy_checkpoint(name, dest)``: a writable copy of a fixture checkpoint at ``dest``."""
    return copy_checkpoint


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint root holding copies of the fixtures (by name) and a ``saves`` save root."""
    root = tmp_path_factory.mktemp("ckpts")
    for name in FIXTURE_NAMES:
        copy_checkpoint(name, root / name)
    (root / "saves").mkdir()
    return root


@contextlib.contextmanager
def start_service(ckpt_root: Path, *, wait_ready: bool = True, **overrides: Any) -> Iterator[Service]:
    save_root = ckpt_root / "saves"
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "checkpoint_roots": [ckpt_root],
        "save_roots": [save_root],
        "memory_budget": "1GiB",
        "device": "cpu",
        "backend": "gloo",
        "shutdown_grace_seconds": 30,
    }
    options.update(overrides)
    settings = Settings(**options)
    app = create_app(settings)
    server = ThreadedServer(uvicorn_config(app, settings))  # the config and HTTP protocol megaload serve uses
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {settings.token_value}"} if settings.token is not None else {}
    client = httpx.Client(base_url=base_url, timeout=120, headers=headers)
    try:
        if wait_ready:
            while client.get("/readyz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("service did not become ready")
                time.sleep(0.01)
        yield Service(base_url, client, app, settings, ckpt_root, save_root)
    finally:
        client.close()
        server.should_exit = True
        thread.join(60)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


@pytest.fixture
def start(ckpt_root: Path):
    """``with start(**settings) as svc:`` a server of one's own (no other may run meanwhile)."""

    def _start(**overrides: Any):
        return start_service(ckpt_root, **overrides)

    return _start


@pytest.fixture(scope="module")
def service(ckpt_root: Path) -> Iterator[Service]:
    with start_service(ckpt_root) as svc:
        yield svc
