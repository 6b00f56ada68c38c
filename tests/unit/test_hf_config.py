"""Megatron config -> Hugging Face config.json: the architecture chosen, the fields written, and
the refusals (each naming the Megatron field). Providers are built directly, as a Bridge run
config would build them; the fixtures' own configs are in tests/compat/test_hf_view.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megaload.checkpoint import GPTModelProvider, IncompatibleConfigError, UnmappableModelError
from megaload.checkpoint._tokenizer_types import NullTokenizer
from megaload.hf import ARCHITECTURES, architecture_named, architecture_of_provider, hf_view


def provider(**overrides) -> GPTModelProvider:
    fields = dict(
        num_layers=3, hidden_size=64, num_attention_heads=8, num_query_groups=2, ffn_hidden_size=96, kv_channels=16,
        add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm",
        layernorm_epsilon=1e-5, position_embedding_type="rope", rotary_base=500000.0,
        share_embeddings_and_output_weights=False, vocab_size=1000, should_pad_vocab=True,
        make_vocab_size_divisible_by=128, seq_length=4096, bf16=True, params_dtype=torch.bfloat16,
        attention_dropout=0.0, init_method_std=0.02,
    )
    fields.update(overrides)
    return GPTModelProvider(**fields)


def test_a_llama_config_json():
    view = hf_view(provider(rope_scaling=True, rope_scaling_factor=32.0))
    assert view.architecture == "LlamaForCausalLM" and view.model_type == "llama"
    assert view.config_json == {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 1000,  # the run config's, before padding to 1024
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
        "attention_bias": False,
        "mlp_bias": False,
    }
    assert view.generation_config_json == {"_from_model_config": True}


def test_the_config_json_is_what_transformers_reads():
    import transformers

    for overrides in ({"rope_scaling": True, "rope_scaling_factor": 8.0}, {"add_qkv_bias": True}, {"qk_layernorm": True},
                      {"qk_layernorm": True, "num_moe_experts": 4, "moe_router_topk": 2, "moe_ffn_hidden_size": 32}):
        view = hf_view(provider(**overrides))
        cfg = transformers.AutoConfig.for_model(**view.config_json)
        assert type(cfg).__name__ == view.architecture.replace("ForCausalLM", "Config")
        assert (cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (2, 16, 1000)
        assert cfg.dtype == torch.bfloat16
        rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
        assert rope["rope_theta"] == 500000.0
        if overrides.get("rope_scaling"):
            assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0


@pytest.mark.parametrize(
    "overrides, architecture",
    [
        ({}, "LlamaForCausalLM"),
        ({"add_qkv_bias": True}, "Qwen2ForCausalLM"),
        ({"qk_layernorm": True}, "Qwen3ForCausalLM"),
        ({"qk_layernorm": True, "num_moe_experts": 8, "moe_router_topk": 2}, "Qwen3MoeForCausalLM"),
        ({"window_size": (4095, 0)}, "MistralForCausalLM"),
    ],
)
def test_the_architecture_follows_the_model_features(overrides, architecture):
    assert hf_view(provider(**overrides)).architecture == architecture


def test_qwen2_and_qwen3_fields():
    qwen2 = hf_view(provider(add_qkv_bias=True, share_embeddings_and_output_weights=True)).config_json
    assert qwen2["model_type"] == "qwen2" and qwen2["tie_word_embeddings"] is True
    assert (qwen2["use_sliding_window"], qwen2["sliding_window"], qwen2["max_window_layers"]) == (False, None, 3)
    assert "attention_bias" not in qwen2  # Qwen2's q/k/v biases are not configurable
    qwen3 = hf_view(provider(qk_layernorm=True, kv_channels=32)).config_json
    assert (qwen3["model_type"], qwen3["head_dim"], qwen3["attention_bias"]) == ("qwen3", 32, False)


@pytest.mark.parametrize("pre_softmax, norm_topk_prob", [(False, True), (True, False)])
def test_qwen3_moe_fields(pre_softmax, norm_topk_prob):
    config = hf_view(provider(qk_layernorm=True, num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=24,
                              moe_router_pre_softmax=pre_softmax, moe_aux_loss_coeff=1e-3)).config_json
    assert config["num_experts"] == 8 and config["num_experts_per_tok"] == 2
    assert config["moe_intermediate_size"] == 24 and config["intermediate_size"] == 96
    assert config["norm_topk_prob"] is norm_topk_prob
    assert (config["decoder_sparse_step"], config["mlp_only_layers"], config["router_aux_loss_coef"]) == (1, [], 1e-3)


def test_mistral_sliding_window_counts_the_token_itself():
    # Megatron's (left, 0) window attends to `left` earlier tokens and the token; HF counts both.
    view = hf_view(provider(window_size=(4095, 0)))
    assert view.config_json["sliding_window"] == 4096 and view.model_type == "mistral"
    named = hf_view(provider(), architecture="mistral")
    assert named.architecture == "MistralForCausalLM" and named.config_json["sliding_window"] is None


def test_position_interpolation_is_linear_rope_scaling():
    view = hf_view(provider(seq_len_interpolation_factor=4.0))
    assert view.config_json["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_fp32_and_fp16_dtypes():
    assert hf_view(provider(bf16=False, params_dtype=torch.float32)).config_json["torch_dtype"] == "float32"
    assert hf_view(provider(bf16=False, fp16=True, params_dtype=torch.float16)).config_json["dtype"] == "float16"


def test_token_ids_come_from_the_tokenizer():
    view = hf_view(provider(), tokenizer=NullTokenizer(1000))
    # a NullTokenizer has only its end-of-document token, which ends generation
    assert view.config_json["eos_token_id"] == 999 and "bos_token_id" not in view.config_json
    assert view.generation_config_json == {"_from_model_config": True, "eos_token_id": 999}


REFUSED = [
    ({"normalization": "LayerNorm"}, "normalization"),
    ({"position_embedding_type": "learned_absolute"}, "position_embedding_type"),
    ({"position_embedding_type": "yarn"}, "position_embedding_type"),
    ({"rotary_interleaved": True}, "rotary_interleaved"),
    ({"layernorm_zero_centered_gamma": True}, "layernorm_zero_centered_gamma"),
    ({"add_bias_linear": True}, "add_bias_linear"),
    ({"gated_linear_unit": False}, "gated_linear_unit"),
    ({"activation_func": F.gelu}, "activation_func"),
    ({"rotary_percent": 0.5}, "rotary_percent"),
    ({"qk_l2_norm": True}, "qk_l2_norm"),
    ({"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
    ({"softmax_scale": 1.0}, "softmax_scale"),
    ({"window_size": (100, 100)}, "window_size"),
    ({"num_moe_experts": 4, "moe_router_topk": 2}, "qk_layernorm"),  # Mixtral-style: no q/k norm
    ({"qk_layernorm": True, "add_qkv_bias": True}, "add_qkv_bias"),
    ({"qk_layernorm": True, "num_moe_experts": 4, "moe_shared_expert_intermediate_size": 64},
     "moe_shared_expert_intermediate_size"),
    ({"qk_layernorm": True, "num_moe_experts": 4, "moe_router_score_function": "sigmoid"}, "moe_router_score_function"),
    ({"qk_layernorm": True, "num_moe_experts": 4, "moe_layer_freq": [1, 0, 1]}, "moe_layer_freq"),
]


@pytest.mark.parametrize("overrides, field", REFUSED, ids=[f for _, f in REFUSED])
def test_what_no_architecture_expresses_is_refused_naming_the_field(overrides, field):
    with pytest.raises(UnmappableModelError) as info:
        hf_view(provider(**overrides))
    assert info.value.field == field
    assert field in str(info.value)


@pytest.mark.parametrize(
    "overrides, architecture, field",
    [
        ({}, "Qwen2ForCausalLM", "add_qkv_bias"),
        ({"add_qkv_bias": True}, "LlamaForCausalLM", "add_qkv_bias"),
        ({}, "Qwen3ForCausalLM", "qk_layernorm"),
        ({"qk_layernorm": True}, "Qwen3MoeForCausalLM", "num_moe_experts"),
        ({"window_size": (4095, 0)}, "LlamaForCausalLM", "window_size"),
        ({}, "GPT2LMHeadModel", "architecture"),
    ],
)
def test_a_named_architecture_that_cannot_hold_the_model_is_refused(overrides, architecture, field):
    with pytest.raises(UnmappableModelError) as info:
        hf_view(provider(**overrides), architecture=architecture)
    assert info.value.field == field


def test_every_architecture_is_nameable_by_class_and_model_type():
    assert set(ARCHITECTURES) == {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                  "Qwen3MoeForCausalLM"}
    for name, arch in ARCHITECTURES.items():
        assert architecture_named(name) is arch and architecture_named(arch.model_type) is arch
    assert hf_view(provider(add_qkv_bias=True), architecture="qwen2").architecture == "Qwen2ForCausalLM"


def test_a_megatron_lm_config_needs_its_args():
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4)
    with pytest.raises(IncompatibleConfigError) as info:
        hf_view(config)
    assert info.value.field == "megatron_args"


@pytest.mark.parametrize(
    "target, architecture",
    [
        ("megatron.bridge.models.mistral.mistral_provider.MistralModelProvider", "MistralForCausalLM"),
        ("megatron.bridge.models.llama.llama_provider.Llama31ModelProvider8B", "LlamaForCausalLM"),
        ("megatron.bridge.models.qwen.qwen_provider.Qwen25ModelProvider7B", "Qwen2ForCausalLM"),
        ("megatron.bridge.models.qwen.qwen_provider.Qwen3ModelProvider8B", "Qwen3ForCausalLM"),
        ("megatron.bridge.models.qwen.qwen_provider.Qwen3MoEModelProvider", "Qwen3MoeForCausalLM"),
        ("megatron.bridge.models.gpt_provider.GPTModelProvider", None),
        ("megatron.bridge.models.nemotron.nemotron_provider.NemotronModelProvider", None),
    ],
)
def test_the_bridge_provider_class_names_its_architecture(target, architecture):
    assert architecture_of_provider(target) == architecture


def test_a_hint_is_taken_only_when_it_holds_the_model():
    assert hf_view(provider(), hint="MistralForCausalLM").architecture == "MistralForCausalLM"
    assert hf_view(provider(add_qkv_bias=True), hint="MistralForCausalLM").architecture == "Qwen2ForCausalLM"
    assert hf_view(provider(), hint="SomethingElse").architecture == "LlamaForCausalLM"
    assert hf_view(provider(), architecture="llama", hint="MistralForCausalLM").architecture == "LlamaForCausalLM"


def test_a_bridge_import_keeps_its_architecture():
    mistral = provider()
    mistral.source_target = "megatron.bridge.models.mistral.mistral_provider.MistralModelProvider"
    assert hf_view(mistral).architecture == "MistralForCausalLM"
    assert hf_view(mistral, architecture="LlamaForCausalLM").architecture == "LlamaForCausalLM"
    assert hf_view(provider()).architecture == "LlamaForCausalLM"  # a plain GPTModelProvider
