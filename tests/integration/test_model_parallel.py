"""Two ranks under torchrun at TP=2: full tensors, saves across layouts, resharding on read.

One service (``torchrun --nproc_per_node 2 -m megaload serve --tensor-parallel 2``) serves
the module. Expected tensors are the fixtures' references, written by the upstream loader at
TP=1, so "the same as at TP=1" is checked against upstream, bit for bit.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from megaload.checkpoint import load_megatron_model, model_state_dict, save_megatron_model

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURES = ("mlm_gpt", "bridge_gpt_tied_rope_fp32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES_DIR / name / "reference_state_dict.safetensors")


class TorchrunService:
    """``torchrun`` with two ranks running ``megaload serve``; output collected in a thread."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(_free_port()), "-m", "megaload", "serve", "--port", "0", "--device", "cpu",
             "--checkpoint-root", str(root), "--save-root", str(root / "saves"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._port = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._port.wait(180):
            self.stop()
            raise AssertionError("service did not start:\n" + self.output)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        deadline = time.monotonic() + 120
        while self.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, self.output
            time.sleep(0.1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._port.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def load(self, path: str) -> str:
        r = self.client.post("/v1/models", json={"checkpoint_path": path})
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    def tensors(self, model_id: str, **query) -> dict[str, torch.Tensor]:
        index = self.client.get(f"/v1/models/{model_id}/state_dict", params=query)
        assert index.status_code == 200, index.text
        out: dict[str, torch.Tensor] = {}
        for shard in index.json()["shards"]:
            r = self.client.get(f"/v1/models/{model_id}/state_dict/{shard['index']}", params=query)
            assert r.status_code == 200, r.text
            out.update(load_safetensors(r.content))
        return out

    def save(self, model_id: str, path: str) -> None:
        job = self.client.post(f"/v1/models/{model_id}/save", json={"path": path}).json()
        while job["state"] in ("queued", "running"):
            time.sleep(0.05)
            job = self.client.get(f"/v1/jobs/{job['id']}").json()
        assert job["state"] == "succeeded", job

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want), (sorted(got), sorted(want))
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp2")
    for name in FIXTURES:
        shutil.copytree(FIXTURES_DIR / name / "checkpoint", root / name)
    (root / "saves").mkdir()
    # a checkpoint saved at TP=1 by this library, for the TP=1 -> TP=2 direction
    save_megatron_model(load_megatron_model(root / "mlm_gpt", use_cpu_init=True), root / "tp1_saved")
    service = TorchrunService(root, "--tensor-parallel", "2")
    service.root = root
    yield service
    service.client.close()
    service.stop()


def test_info_reports_the_layout(tp2):
    info = tp2.client.get("/v1/info").json()
    assert (info["world_size"], info["tensor_model_parallel_size"], info["pipeline_model_parallel_size"]) == (2, 2, 1)


@pytest.mark.parametrize("name", FIXTURES)
def test_tp2_streams_the_tp1_tensors_bit_for_bit(tp2, name):
    got = tp2.tensors(tp2.load(name))
    assert_same(got, reference(name))


def test_tp2_streams_the_hf_view_of_the_tp1_tensors(tp2):
    """names=hf over a model split on two ranks: each HF tensor is built from gathered parts."""
    from megaload.checkpoint import load_model_config, load_tokenizer
    from megaload.hf import hf_view

    config, args = load_model_config(tp2.root / "mlm_gpt")
    view = hf_view(config, megatron_args=args, tokenizer=load_tokenizer(tp2.root / "mlm_gpt"))
    want = {name: tensor.contiguous() for name, tensor in view.export(reference("mlm_gpt"))}
    assert_same(tp2.tensors(tp2.load("mlm_gpt"), names="hf"), want)
    hub = tp2.client.get(f"/hf/api/models/megaload/{tp2.load('mlm_gpt')}")
    assert hub.status_code == 200 and hub.json()["config"]["architectures"] == ["LlamaForCausalLM"]


def test_index_reports_full_shapes_without_gathering(tp2):
    model_id = tp2.load("mlm_gpt")
    index = tp2.client.get(f"/v1/models/{model_id}/state_dict").json()
    want = reference("mlm_gpt")
    assert sorted(index["weight_map"]) == sorted(want)
    assert index["total_size"] == sum(t.numel() * t.element_size() for t in want.values())


def test_saved_at_tp2_loads_at_tp1_and_tp2(tp2):
    model_id = tp2.load("mlm_gpt")
    tp2.save(model_id, "from_tp2")
    saved = tp2.root / "saves" / "from_tp2"
    at_tp1 = model_state_dict(load_megatron_model(saved, use_cpu_init=True))
    assert_same(at_tp1, reference("mlm_gpt"))
    assert_same(tp2.tensors(tp2.load("saves/from_tp2")), reference("mlm_gpt"))


def test_saved_at_tp1_loads_at_tp2(tp2):
    assert_same(tp2.tensors(tp2.load("tp1_saved")), reference("mlm_gpt"))


def _expected_slice(name: str, full: torch.Tensor, rank: int, size: int, glu: bool, vocab_rows: int) -> torch.Tensor:
    """The megatron TP layout, written out independently of the service."""
    if name.endswith(("word_embeddings.weight", "output_layer.weight")):
        padded = torch.zeros((vocab_rows, *full.shape[1:]), dtype=full.dtype)
        padded[: full.shape[0]] = full
        step = vocab_rows // size
        return padded[rank * step : (rank + 1) * step]
    if re.search(r"(linear_qkv|linear_fc1)\.(weight|bias)$", name):
        if glu and "linear_fc1" in name:
            half = full.shape[0] // 2
            step = half // size
            return torch.cat([full[rank * step : (rank + 1) * step], full[half + rank * step : half + (rank + 1) * step]])
        step = full.shape[0] // size
        return full[rank * step : (rank + 1) * step]
    if re.search(r"(linear_proj|linear_fc2)\.weight$", name):
        step = full.shape[1] // size
        return full[:, rank * step : (rank + 1) * step]
    return full


@pytest.mark.parametrize(
    ("name", "size", "glu", "vocab_rows"),
    [("mlm_gpt", 2, True, 256), ("bridge_gpt_tied_rope_fp32", 2, False, 256), ("bridge_gpt_tied_rope_fp32", 4, False, 512)],
)
def test_tp_slices_match_the_full_tensors(tp2, name, size, glu, vocab_rows):
    model_id = tp2.load(name)
    want = reference(name)
    for rank in range(size):
        got = tp2.tensors(model_id, tp_rank=rank, tp_size=size)
        assert sorted(got) == sorted(want)
        for key, full in want.items():
            assert torch.equal(got[key], _expected_slice(key, full, rank, size, glu, vocab_rows)), (key, rank)
    if vocab_rows > 256:  # ranks past the vocabulary's 256 rows hold only padding
        last = tp2.tensors(model_id, tp_rank=size - 1, tp_size=size, keys="model.embedding")
        assert not last["model.embedding.word_embeddings.weight"].any()


def test_tp_slice_refused_when_query_groups_do_not_divide(tp2):
    model_id = tp2.load("mlm_gpt")  # 2 query groups
    r = tp2.client.get(f"/v1/models/{model_id}/state_dict", params={"tp_rank": 0, "tp_size": 4})
    assert r.status_code == 422, r.text
    assert "tp_size" in r.text
    half = tp2.client.get(f"/v1/models/{model_id}/state_dict", params={"tp_rank": 0})
    assert half.status_code == 400 and "tp_size" in half.text


def test_overrides_must_match_the_service_layout(tp2):
    r = tp2.client.post(
        "/v1/models", json={"checkpoint_path": "mlm_gpt", "mp_overrides": {"tensor_model_parallel_size": 1}}
    )
    assert r.status_code == 422, r.text
    assert "mp_overrides.tensor_model_parallel_size" in r.text


def test_failed_load_keeps_residents_and_readiness(tp2):
    model_id = tp2.load("mlm_gpt")
    (tp2.root / "broken").mkdir(exist_ok=True)
    bad = tp2.client.post("/v1/models", json={"checkpoint_path": "broken"})
    assert bad.status_code in (404, 422), bad.text
    assert tp2.client.get("/readyz").status_code == 200
    assert_same(tp2.tensors(model_id, keys="model.decoder.layers.1."), {
        k: v for k, v in reference("mlm_gpt").items() if k.startswith("model.decoder.layers.1.")
    })


def test_pipeline_parallel_streams_global_layer_names(tmp_path):
    """PP=2: each stage holds one layer (numbered locally 0); names and tensors are global."""
    shutil.copytree(FIXTURES_DIR / "mlm_gpt" / "checkpoint", tmp_path / "mlm_gpt")
    (tmp_path / "saves").mkdir()
    service = TorchrunService(tmp_path, "--pipeline-parallel", "2")
    try:
        assert_same(service.tensors(service.load("mlm_gpt")), reference("mlm_gpt"))
    finally:
        service.client.close()
        service.stop()


def test_killed_follower_fails_readiness_and_exits(tmp_path):
    shutil.copytree(FIXTURES_DIR / "mlm_gpt" / "checkpoint", tmp_path / "mlm_gpt")
    (tmp_path / "saves").mkdir()
    timeout = 10
    service = TorchrunService(tmp_path, "--collective-timeout-seconds", str(timeout))
    try:
        m = re.search(r"rank 1 \(pid (\d+)\) follows rank 0", service.output)
        assert m, service.output
        import os

        os.kill(int(m.group(1)), signal.SIGKILL)
        killed = time.monotonic()
        unready = None
        while time.monotonic() - killed < timeout + 20 and service.proc.poll() is None:
            try:
                if service.client.get("/readyz", timeout=2).status_code != 200:
                    unready = unready or time.monotonic()
            except httpx.TransportError:
                unready = unready or time.monotonic()
            time.sleep(0.1)
        code = service.proc.wait(timeout + 20)
        assert code != 0, service.output
        assert unready is not None and unready - killed <= timeout + 5, service.output
    finally:
        service.client.close()
        service.stop()
