"""A Hugging Face model directory inside a checkpoint root, through the real service and client.

``POST /v1/models`` with an HF directory (the ``hf/`` of each fixture upstream's AutoBridge
imported) loads it: its budget estimate is the safetensors headers' size, its state dict is
upstream's import (``reference_state_dict.safetensors``) bit for bit, and a save of it loads back
to the same tensors. A directory asking for remote code is a 422 naming the field, and the
service stays ready.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

import megaload_client as mc

HF_FIXTURES = tuple(name for name in FIXTURE_NAMES if (FIXTURES_DIR / name / "hf" / "config.json").is_file())


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES_DIR / name / "reference_state_dict.safetensors"))


def _bits_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)), name


@pytest.fixture(scope="module")
def hf_dirs(service):
    root = service.ckpt_root / "hf_dirs"
    if not root.exists():
        root.mkdir()
        for name in HF_FIXTURES:
            shutil.copytree(FIXTURES_DIR / name / "hf", root / name)
    return root


@pytest.fixture
def client(service):
    with mc.Client(service.base_url, token=service.settings.token_value if service.settings.token else None) as c:
        yield c


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_an_hf_directory_loads_as_upstreams_import(client, hf_dirs, name):
    model = client.load(f"hf_dirs/{name}")
    assert model.info.format == "hugging_face"
    reference = _reference(name)
    header_bytes = sum(t.numel() * t.element_size() for t in load_file(str(hf_dirs / name / "model.safetensors")).values())
    assert model.info.size_bytes == sum(t.numel() * t.element_size() for t in reference.values()) == header_bytes
    got = model.state_dict()
    _bits_equal({k if k.startswith("model.") else f"model.{k}": v for k, v in got.items()}, reference)
    model.unload()


def test_checkpoint_routes_describe_an_hf_directory(client, hf_dirs):
    config = client.checkpoint_config("hf_dirs/hf_qwen2")
    assert config.format == "hugging_face"
    tensors = {t.name: t for t in client.checkpoint_tensors("hf_dirs/hf_qwen2").tensors}
    assert tensors["model.layers.0.self_attn.q_proj.bias"].shape == [64]
    assert client.checkpoint_tokenizer("hf_dirs/hf_qwen2").vocab_size == 120


def test_a_saved_hf_directory_loads_back_to_the_same_tensors(client, service, hf_dirs):
    model = client.load("hf_dirs/hf_qwen3_moe")
    done = model.save("from-hf").wait(timeout=300, poll_interval=0.05)
    assert done.state is mc.JobState.SUCCEEDED
    back = client.load("saves/from-hf")
    assert back.info.format == "megatron_bridge"
    got = back.state_dict()
    _bits_equal({k if k.startswith("model.") else f"model.{k}": v for k, v in got.items()}, _reference("hf_qwen3_moe"))
    assert (service.save_root / "from-hf" / "iter_0000000" / "tokenizer" / "tokenizer.json").is_file()


def test_remote_code_is_a_422_naming_the_field(client, service, hf_dirs):
    bad = hf_dirs / "remote_code"
    if not bad.exists():
        shutil.copytree(FIXTURES_DIR / "hf_qwen2" / "hf", bad)
        config = json.loads((bad / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
        (bad / "config.json").write_text(json.dumps(config))
    r = service.load("hf_dirs/remote_code")
    assert r.status_code == 422, r.text
    assert "auto_map" in r.json()["detail"]
    assert service.client.get("/readyz").status_code == 200


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_an_hf_directory_streams_back_under_hf_names_as_it_is(client, hf_dirs, name):
    """HF directory -> service -> state_dict(names="hf") is the directory's own tensors, key for
    key, dtype for dtype, bit for bit (issue 14's round trip through the service)."""
    model = client.load(f"hf_dirs/{name}")
    got = model.state_dict(names="hf")
    _bits_equal(got, load_file(str(hf_dirs / name / "model.safetensors")))
    model.unload()
