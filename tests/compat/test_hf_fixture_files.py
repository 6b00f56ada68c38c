"""The `hf_*` fixtures are consistent in themselves (what tests/fixtures/make_hf_fixtures.py wrote).

Only the fixture files are checked here, against software we did not write (transformers, safetensors,
torch_dist's own metadata reader): the HF model loads in transformers with every tensor used, the
upstream references agree with the checkpoint on disk and with each other, and the checkpoint records a
tokenizer path that no longer exists while bundling the tokenizer files. Loading them with our loader is
tested elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HF_FIXTURES = ("hf_qwen2", "hf_llama3", "hf_qwen3", "hf_qwen3_moe", "hf_mistral")
# bf16 rounding of two forwards of the same weights in different code (megatron-core vs transformers);
# the largest measured difference is 0.016 on logits of magnitude up to 1.7 (see fixtures/README.md)
LOGITS_ATOL = 0.05

pytestmark = pytest.mark.parametrize("name", HF_FIXTURES)


def _iter_dir(name: str) -> Path:
    notes = json.loads((FIXTURES / name / "reference_notes.json").read_text())
    return FIXTURES / name / notes["iter_dir"]


def test_hf_model_loads_in_transformers_with_every_tensor_used(name):
    from transformers import AutoModelForCausalLM

    hf = FIXTURES / name / "hf"
    config = json.loads((hf / "config.json").read_text())
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
    assert dtypes == {"BF16"}
    assert config["dtype"] == "bfloat16"
    assert embed == [config["vocab_size"], config["hidden_size"]]
    model, info = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(model).__name__ == config["architectures"][0]


def test_reference_state_dict_matches_the_checkpoint_on_disk(name):
    from torch.distributed.checkpoint import FileSystemReader

    ref = load_file(str(FIXTURES / name / "reference_state_dict.safetensors"))
    notes = json.loads((FIXTURES / name / "reference_notes.json").read_text())
    meta = FileSystemReader(str(_iter_dir(name))).read_metadata().state_dict_metadata
    assert sorted(ref) == sorted(notes["state_dict"]["tensors"])
    assert {str(t.dtype) for t in ref.values()} == {"torch.bfloat16"}
    on_disk = {k: m for k, m in meta.items() if hasattr(m, "size")}
    assert {str(m.properties.dtype) for m in on_disk.values()} == {"torch.bfloat16"}
    # every returned element is stored once on disk (layers stacked, experts stacked)
    assert sum(t.numel() for t in ref.values()) == sum(m.size.numel() for m in on_disk.values())


def test_reference_config_matches_the_hf_config(name):
    hf = json.loads((FIXTURES / name / "hf" / "config.json").read_text())
    cfg = json.loads((FIXTURES / name / "reference_config.json").read_text())
    assert cfg["vocab_size"] == hf["vocab_size"] and cfg["should_pad_vocab"] is False
    assert cfg["num_layers"] == hf["num_hidden_layers"] and cfg["hidden_size"] == hf["hidden_size"]
    assert cfg["num_query_groups"] == hf["num_key_value_heads"]
    assert cfg["kv_channels"] == hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
    assert cfg["rotary_base"] == hf["rope_theta"]
    assert cfg["share_embeddings_and_output_weights"] == hf["tie_word_embeddings"]
    assert cfg["params_dtype"] == "torch.bfloat16" and cfg["bf16"] is True
    if "num_experts" in hf:  # hf_qwen2's reference (made before MoE fixtures existed) lacks the MoE fields
        assert cfg["num_moe_experts"] == hf["num_experts"] and cfg["moe_router_topk"] == hf["num_experts_per_tok"]
        assert cfg["moe_ffn_hidden_size"] == hf["moe_intermediate_size"]
    rope_scaling = hf.get("rope_scaling") or {}
    if rope_scaling.get("rope_type") == "llama3":
        assert cfg["rope_scaling"] is True and cfg["rope_scaling_factor"] == rope_scaling["factor"]


def test_mcore_and_hf_logits_agree(name):
    mc = load_file(str(FIXTURES / name / "reference_mcore_logits.safetensors"))
    hf = load_file(str(FIXTURES / name / "reference_hf_logits.safetensors"))
    vocab = json.loads((FIXTURES / name / "hf" / "config.json").read_text())["vocab_size"]
    if "input_ids" in mc:  # hf_qwen2's megatron-core logits were written without them (same ids: fixtures/README.md)
        assert torch.equal(mc["input_ids"], hf["input_ids"])
    assert mc["logits"].dtype == hf["logits"].dtype == torch.float32
    assert hf["logits"].shape == (1, hf["input_ids"].shape[1], vocab)
    assert mc["logits"].shape[-1] >= vocab
    torch.testing.assert_close(mc["logits"][..., :vocab], hf["logits"], atol=LOGITS_ATOL, rtol=0)
    # megatron-core's top token is HF's top token or within bf16 rounding of it (near ties may swap)
    picked = hf["logits"].gather(-1, mc["logits"][..., :vocab].argmax(-1, keepdim=True)).squeeze(-1)
    assert (hf["logits"].amax(-1) - picked).max().item() <= LOGITS_ATOL


def test_checkpoint_bundles_the_tokenizer_and_records_a_path_that_is_gone(name):
    from transformers import PreTrainedTokenizerFast

    iter_dir = _iter_dir(name)
    run_config = yaml.safe_load((iter_dir / "run_config.yaml").read_text())
    recorded = run_config["tokenizer"]["tokenizer_model"]
    assert Path(recorded).is_absolute() and not Path(recorded).exists()
    tok = PreTrainedTokenizerFast.from_pretrained(iter_dir / "tokenizer")
    vocab = json.loads((FIXTURES / name / "hf" / "config.json").read_text())["vocab_size"]
    assert len(tok) <= vocab
    ids = tok("Hello world, this is a test.")["input_ids"]
    assert ids and max(ids) < len(tok)
