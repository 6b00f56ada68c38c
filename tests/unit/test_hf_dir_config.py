"""Hugging Face config.json -> our provider, and telling an HF directory from a Megatron checkpoint.

The fixtures' own config.json files against upstream's run configs are in
tests/compat/test_hf_import.py; here the refusals and edge cases, each naming the field.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from upstream_fixtures import FIXTURES_DIR

from megaload.checkpoint import (
    CheckpointFormat,
    CorruptCheckpointError,
    IncompatibleConfigError,
    NotACheckpointError,
    UnmappableModelError,
    hf_model_dir,
    inspect_layout,
    load_model_config,
)
from megaload.checkpoint._hf_config import provider_from_hf_config

ORIGINAL = json.loads((FIXTURES_DIR / "hf_llama3" / "hf" / "config.json").read_text())
MOE = json.loads((FIXTURES_DIR / "hf_qwen3_moe" / "hf" / "config.json").read_text())


def _provider(base: dict, **changes):
    return provider_from_hf_config({**base, **changes}, path=Path("/models/x/config.json"))


@pytest.mark.parametrize("base, changes, field", [
    (ORIGINAL, {"rope_scaling": {**ORIGINAL["rope_scaling"], "low_freq_factor": 2.0}}, "rope_scaling.low_freq_factor"),
    (ORIGINAL, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    (ORIGINAL, {"mlp_bias": True}, "mlp_bias"),
    (ORIGINAL, {"attention_bias": True}, "attention_bias"),
    (ORIGINAL, {"hidden_act": "gelu"}, "hidden_act"),
    (ORIGINAL, {"num_experts": 4}, "num_experts"),
    (ORIGINAL, {"architectures": ["LlamaForCausalLM", "MistralForCausalLM"]}, "architectures"),
    (ORIGINAL, {"architectures": "LlamaForCausalLM"}, "architectures"),
    (MOE, {"norm_topk_prob": False}, "norm_topk_prob"),
    (MOE, {"mlp_only_layers": [0]}, "mlp_only_layers"),
    (MOE, {"decoder_sparse_step": 2}, "decoder_sparse_step"),
])
def test_unmappable_configs_are_refused_naming_the_field(base, changes, field):
    with pytest.raises(UnmappableModelError) as info:
        _provider(base, **changes)
    assert info.value.field == field
    assert "/models/x/config.json" in str(info.value) and field.split(".")[0] in str(info.value)


@pytest.mark.parametrize("changes, error, field", [
    ({"hidden_size": "64"}, IncompatibleConfigError, "hidden_size"),
    ({"num_hidden_layers": 0}, IncompatibleConfigError, "num_hidden_layers"),
    ({"dtype": "int8", "torch_dtype": None}, IncompatibleConfigError, "dtype"),
])
def test_bad_values_are_refused_naming_the_field(changes, error, field):
    with pytest.raises(error) as info:
        _provider(ORIGINAL, **changes)
    assert info.value.field == field and field in str(info.value)


def test_a_missing_size_is_corrupt():
    config = {k: v for k, v in ORIGINAL.items() if k != "vocab_size"}
    with pytest.raises(CorruptCheckpointError, match="vocab_size"):
        provider_from_hf_config(config, path=Path("/models/x/config.json"))


def test_dtype_defaults_and_vocab_divisor_as_upstream():
    fp32 = _provider({k: v for k, v in ORIGINAL.items() if k != "dtype"})
    assert fp32.params_dtype == torch.float32 and not fp32.bf16
    assert _provider(ORIGINAL, vocab_size=120).make_vocab_size_divisible_by == 8
    assert _provider(ORIGINAL, vocab_size=125).make_vocab_size_divisible_by == 1
    assert _provider(ORIGINAL, vocab_size=128256).make_vocab_size_divisible_by == 128
    assert not _provider(ORIGINAL, vocab_size=125).should_pad_vocab


def test_mistral_sliding_window_is_megatrons_window_size():
    mistral = json.loads((FIXTURES_DIR / "hf_mistral" / "hf" / "config.json").read_text())
    provider = _provider(mistral, sliding_window=64)
    assert provider.window_size == [64, 0] and provider.cp_comm_type == "a2a"
    assert provider.source_target.endswith("mistral_provider.MistralModelProvider")


def test_an_hf_directory_is_told_from_megatron_checkpoints(tmp_path):
    hf = FIXTURES_DIR / "hf_qwen2" / "hf"
    assert hf_model_dir(hf) == hf
    layout = inspect_layout(hf)
    assert layout.format is CheckpointFormat.HUGGING_FACE and layout.iteration_dir == hf
    assert hf_model_dir(FIXTURES_DIR / "hf_qwen2" / "checkpoint") is None
    assert inspect_layout(FIXTURES_DIR / "hf_qwen2" / "checkpoint").format is CheckpointFormat.BRIDGE
    only_bin = tmp_path / "bin"
    only_bin.mkdir()
    shutil.copy(hf / "config.json", only_bin / "config.json")
    (only_bin / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(NotACheckpointError, match="model.safetensors"):
        load_model_config(only_bin)
