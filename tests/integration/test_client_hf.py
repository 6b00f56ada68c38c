"""The client's Hugging Face view (``names="hf"``), sync and async, SDK and CLI, end to end.

Against the real service (module-scoped ``service`` fixture); what arrives is compared with
the original Hugging Face model the ``hf_qwen2`` checkpoint was imported from, and a
downloaded directory is loaded by ``transformers`` in a fresh, offline process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from upstream_fixtures import FIXTURES_DIR

import megaload_client as mc

QWEN2 = FIXTURES_DIR / "hf_qwen2"
BUNDLED = QWEN2 / "checkpoint" / "iter_0000000" / "tokenizer"


def original() -> dict[str, torch.Tensor]:
    return load_file(str(QWEN2 / "hf" / "model.safetensors"))


def assert_bit_equal(got, want) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(got[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


@pytest.fixture
def client(service):
    with mc.Client(service.base_url) as c:
        yield c


def test_state_dict_and_iter_tensors_with_hf_names(client):
    model = client.load("hf_qwen2")
    state = model.state_dict(names="hf")
    assert_bit_equal(state, original())
    assert list(state) == list(model.index(names="hf").weight_map)  # save_pretrained's order
    streamed = dict(model.iter_tensors(names="hf", keys="model.layers.0.mlp.", dtype="float32"))
    assert_bit_equal(streamed, {k: v.float() for k, v in original().items() if k.startswith("model.layers.0.mlp.")})
    with pytest.raises(ValueError, match="names"):
        model.state_dict(names="transformers")


def test_async_state_dict_iter_tensors_and_download_with_hf_names(service, tmp_path):
    async def run():
        async with mc.AsyncClient(service.base_url) as client:
            model = await client.load("hf_qwen2")
            state = await model.state_dict(names="hf")
            names = [name async for name, _ in await model.iter_tensors(names="hf")]
            result = await model.download(tmp_path, names="hf")
            return state, names, result

    state, names, result = asyncio.run(run())
    assert_bit_equal(state, original())
    assert names == list(state)
    assert {p.name for p in result.files} == {"config.json", "generation_config.json"} | {
        p.name for p in BUNDLED.iterdir()
    }
    assert_bit_equal(load_file(str(result.shard_files[0])), original())


def test_unmappable_model_is_a_typed_error_naming_the_field(client, tmp_path):
    model = client.load("bridge_gpt_tied_rope_fp32")
    with pytest.raises(mc.UnmappableModelError) as caught:
        model.state_dict(names="hf")
    assert caught.value.problem.field == "normalization"
    with pytest.raises(mc.UnmappableModelError):
        model.download(tmp_path, names="hf")
    assert not list(tmp_path.iterdir())


def test_cli_download_hf_is_a_from_pretrained_directory(service, tmp_path):
    model_id = mc.Client(service.base_url).load("hf_qwen2").id
    target = tmp_path / "qwen2"
    done = subprocess.run(
        [sys.executable, "-m", "megaload_client", "--url", service.base_url, "--json", "download", model_id,
         str(target), "--hf"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {os.path.basename(p) for p in report["files"]} >= {"config.json", "tokenizer.json"}
    for path in BUNDLED.iterdir():
        assert (target / path.name).read_bytes() == path.read_bytes()
    # transformers reads the directory with no network at all, and computes what the
    # original model computes.
    code = f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        ids = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 8, 110, 2, 7, 77]])
        got = AutoModelForCausalLM.from_pretrained({str(target)!r})
        want = AutoModelForCausalLM.from_pretrained({str(QWEN2 / 'hf')!r})
        with torch.no_grad():
            same = torch.equal(got(ids).logits, want(ids).logits)
        tok = AutoTokenizer.from_pretrained({str(target)!r})
        print(json.dumps({{"same": same, "class": type(got).__name__, "ids": tok("Hello world").input_ids,
                           "want": AutoTokenizer.from_pretrained({str(QWEN2 / 'hf')!r})("Hello world").input_ids}}))
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), TRANSFORMERS_VERBOSITY="error")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["same"] and out["class"] == "Qwen2ForCausalLM" and out["ids"] == out["want"]
