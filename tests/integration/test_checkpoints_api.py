"""/v1/checkpoints: config, tensor metadata, tokenizer and tokenize, checked against the
fixtures' upstream references."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from upstream_fixtures import FIXTURE_NAMES

from megaload_client import problems

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"


def _ref(name: str, file: str) -> dict:
    return json.loads((FIXTURES_DIR / name / file).read_text())


def test_config_of_a_megatron_lm_checkpoint(service):
    r = service.client.get("/v1/checkpoints/config", params={"path": "mlm_gpt"})
    assert r.status_code == 200, r.text
    body = r.json()
    ref = _ref("mlm_gpt", "reference_config.json")
    assert body["path"] == "mlm_gpt"
    assert body["format"] == "megatron_lm" and body["iteration"] == 10
    assert body["config_type"] == ref["config_type"]
    for field in ("hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                  "normalization", "gated_linear_unit", "add_bias_linear", "bf16", "fp16", "kv_channels"):
        assert body["config"][field] == ref[field], field
    assert body["config"]["params_dtype"] == ref["params_dtype"].removeprefix("torch.")
    assert body["mlm_args"] is not None
    for key, value in ref.items():
        if key.startswith("mlm_args.") and value != "<missing>":
            got = body["mlm_args"][key.removeprefix("mlm_args.")]
            assert got == (value.removeprefix("torch.") if isinstance(value, str) else value), key


def test_config_of_a_bridge_checkpoint(service):
    body = service.client.get("/v1/checkpoints/config", params={"path": "bridge_gpt_tied_rope_fp32"}).json()
    ref = _ref("bridge_gpt_tied_rope_fp32", "reference_config.json")
    assert body["format"] == "megatron_bridge" and body["iteration"] == 0
    assert body["mlm_args"] is None
    assert body["model_type"] == "gpt"
    for field in ("hidden_size", "num_layers", "vocab_size", "seq_length", "position_embedding_type",
                  "share_embeddings_and_output_weights", "rotary_base", "normalization"):
        assert body["config"][field] == ref[field], field


def test_tensors_match_the_checkpoint_metadata(service):
    r = service.client.get("/v1/checkpoints/tensors", params={"path": "mlm_gpt/iter_0000010"})
    assert r.status_code == 200
    body = r.json()
    notes = _ref("mlm_gpt", "reference_notes.json")["layout"]["distcp_entries"]
    expected = {k: v for k, v in notes.items() if v["kind"] == "TensorStorageMetadata"}
    got = {t["name"]: t for t in body["tensors"]}
    assert set(got) == set(expected)
    for name, entry in expected.items():
        assert got[name]["shape"] == entry["size"]
        assert "torch." + got[name]["dtype"] == entry["dtype"]
    assert body["tensor_count"] == len(expected)
    assert body["total_bytes"] == sum(t["size_bytes"] for t in body["tensors"])
    # the same bytes a float32 load takes
    model = service.load("mlm_gpt").json()
    assert model["size_bytes"] == body["total_bytes"]


def _expand(template: str, shape: list[int]) -> dict[str, list[int]]:
    """The keys a stream_key template stands for, with the shape of each."""
    fields = [f for f in ("layer", "expert") if "{" + f + "}" in template]
    out = {}
    for index in itertools.product(*(range(n) for n in shape[: len(fields)])):
        out[template.format(**dict(zip(fields, index)))] = shape[len(fields):]
    return out


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_stream_keys_say_what_each_stored_tensor_streams_as(service, name):
    """Stored names are stacked sharded keys; each tensor's stream_key, expanded over its
    leading dimensions, gives exactly the keys and shapes the loaded model streams."""
    body = service.client.get("/v1/checkpoints/tensors", params={"path": name}).json()
    assert "stacked" in body["naming"] and "stream_key" in body["naming"]
    expected: dict[str, list[int]] = {}
    for tensor in body["tensors"]:
        assert tensor["stream_key"] is not None, tensor
        for key, shape in _expand(tensor["stream_key"], tensor["shape"]).items():
            assert key not in expected, key
            expected[key] = shape
    model_id = service.load(name).json()["id"]
    streamed = service.client.get(f"/v1/models/{model_id}/state_dict").json()
    assert sorted(expected) == sorted(streamed["weight_map"])
    with safe_open(str(FIXTURES_DIR / name / "reference_state_dict.safetensors"), "pt") as f:
        assert {k: list(f.get_slice(k).get_shape()) for k in f.keys()} == expected
    service.client.delete(f"/v1/models/{model_id}")


def test_a_hugging_face_directory_lists_hf_names_without_stream_keys(service):
    shutil.copytree(FIXTURES_DIR / "hf_llama3" / "hf", service.ckpt_root / "hf_llama3_dir", dirs_exist_ok=True)
    body = service.client.get("/v1/checkpoints/tensors", params={"path": "hf_llama3_dir"}).json()
    assert "Hugging Face names" in body["naming"] and "names=hf" in body["naming"]
    assert any(t["name"].startswith("model.layers.0.") for t in body["tensors"])
    assert all(t["stream_key"] is None for t in body["tensors"])


def test_tokenizer_and_tokenize(service):
    ref = _ref("mlm_gpt", "reference_tokenizer.json")
    r = service.client.get("/v1/checkpoints/tokenizer", params={"path": "mlm_gpt"})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["vocab_size"] == ref["vocab_size"]
    assert info["eod"] == ref["eod"]
    assert info["bos"] is None and info["eos"] is None and info["pad"] is None  # absent on NullTokenizer
    assert info["tokenizer_type"] == "NullTokenizer"
    assert info["special_ids"] == {"eod": ref["eod"]}
    r = service.client.post("/v1/checkpoints/tokenize", json={"path": "mlm_gpt", "text": ref["null_tokenizer_sentence"]})
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == ref["null_tokenizer_ids"]
    assert r.json()["count"] == len(ref["null_tokenizer_ids"])
    assert r.json()["detokenized"] == ref["null_tokenizer_sentence"]
    r = service.client.post("/v1/checkpoints/tokenize", json={"path": "mlm_gpt", "text": "7 8", "detokenize": False})
    assert r.json() == {"ids": [7, 8], "count": 2, "detokenized": None}
    # NullTokenizer only takes space-separated ids: words are a typed tokenizer error, not a 500
    r = service.client.post("/v1/checkpoints/tokenize", json={"path": "mlm_gpt", "text": ref["sentence"]})
    assert r.status_code == 422, r.text
    assert r.json()["type"] == problems.TOKENIZER_ERROR
    r = service.client.post("/v1/checkpoints/tokenize", json={"path": "mlm_gpt", "text": "1", "extra": 1})
    assert r.status_code == 422 and r.json()["type"] == problems.VALIDATION


def test_checkpoint_without_a_tokenizer(service):
    r = service.client.get("/v1/checkpoints/tokenizer", params={"path": "bridge_gpt_tied_rope_fp32"})
    assert r.status_code == 422, r.text
    assert r.json()["type"] == problems.TOKENIZER_ERROR
    assert r.json()["detail"]


def test_missing_path_parameter(service):
    r = service.client.get("/v1/checkpoints/config")
    assert r.status_code == 422 and r.json()["type"] == problems.VALIDATION
    assert r.json()["errors"][0]["loc"] == ["query", "path"]
