"""State-dict names do not depend on the host: every recorded layer spec builds megatron-core's
local spec, with or without Transformer Engine.

Upstream's loader builds the Transformer Engine spec where TE imports, and its state-dict keys
then differ (``self_attention.linear_qkv.layer_norm_weight`` where the local spec has
``input_layernorm.weight``, ``mlp.linear_fc1.layer_norm_weight`` for ``pre_mlp_layernorm.weight``).
The references were made on a host without TE, so they hold the local spec's names; these
tests make the switch that picked the spec from the host fail wherever TE is installed.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from megaload.checkpoint import GPTModelProvider, load_megatron_model
from megaload.checkpoint._provider import LAYER_SPECS, gpt_layer_spec


def _config(**fields) -> GPTModelProvider:
    return GPTModelProvider(num_layers=2, hidden_size=64, num_attention_heads=4, **fields)


@pytest.mark.parametrize("spec_name", LAYER_SPECS)
@pytest.mark.parametrize("fields", [{}, {"num_moe_experts": 4, "qk_layernorm": True}, {"normalization": "RMSNorm"}])
def test_every_recorded_spec_builds_the_local_spec(spec_name, fields):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = _config(**fields)
    local = get_gpt_layer_local_spec(
        num_experts=config.num_moe_experts, moe_grouped_gemm=False, qk_layernorm=config.qk_layernorm,
        normalization=config.normalization,
    )
    assert gpt_layer_spec(config, spec_name) == local


def test_a_transformer_engine_run_config_streams_the_references_names(copy_fixture, references, flatten_state_dict,
                                                                      assert_bitwise_equal):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    run_config = save_dir / "iter_0000000" / "run_config.yaml"
    text = run_config.read_text()
    local = "_target_: megatron.bridge.models.gpt_provider.local_layer_spec"
    assert local in text
    run_config.write_text(text.replace(local, "_target_: megatron.bridge.models.gpt_provider.transformer_engine_layer_spec"))
    tensors, _ = flatten_state_dict(load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True))
    assert any(k.endswith(".input_layernorm.weight") for k in tensors)
    assert not any(".layer_norm_weight" in k for k in tensors)
    assert_bitwise_equal(tensors, references.state_dict("bridge_gpt_tied_rope_fp32"))


def test_a_megatron_lm_transformer_engine_checkpoint_streams_the_references_names(copy_fixture, references,
                                                                                  flatten_state_dict, assert_bitwise_equal):
    save_dir = copy_fixture("mlm_gpt")
    common = save_dir / "iter_0000010" / "common.pt"
    state = torch.load(common, weights_only=False)
    assert isinstance(state["args"], argparse.Namespace) and state["args"].transformer_impl == "local"
    state["args"].transformer_impl = "transformer_engine"
    torch.save(state, common)
    tensors, _ = flatten_state_dict(load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True))
    assert_bitwise_equal(tensors, references.state_dict("mlm_gpt"))
