"""A Hugging Face ``config.json`` as our :class:`GPTModelProvider`: what Megatron Bridge's
``AutoBridge`` makes of the same file, for the architectures the Hugging Face view maps.

The facts carried over (upstream's bridges, Megatron Bridge 0.3.1): the common field mapping
(layers, sizes, heads, query groups, ``head_dim`` -> ``kv_channels``, vocabulary,
``max_position_embeddings`` -> ``seq_length``, ``rms_norm_eps``, ``initializer_range``,
dropouts, tied embeddings, ``rope_theta``, MoE sizes); ``make_vocab_size_divisible_by`` the
largest power of two up to 128 dividing the vocabulary (no padding); the dtype from
``torch_dtype``/``dtype`` (float32 when absent); then each architecture's own settings (RMSNorm,
SwiGLU, rope, Qwen2's q/k/v biases, Qwen3's q/k norm, Llama 3 rope scaling, Mistral's sliding
window, Qwen3-MoE's router settings). Fusions and the alltoall dispatcher, which need CUDA, are
off (as upstream's CPU import leaves them), so the provider builds on any host.

Refused, each with :class:`UnmappableModelError` naming ``config.json`` and the field: an
architecture or model type the view does not map, remote code (``auto_map``,
``trust_remote_code``), rope scaling other than Llama 3's, Qwen sliding windows, biases Llama
does not have, activations other than SiLU, MoE layers that are not all sparse.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._dtypes import parse_dtype
from ._errors import (
    CorruptCheckpointError,
    IncompatibleConfigError,
    InvalidDtypeError,
    UnmappableModelError,
    summarize,
)
from ._provider import GPTModelProvider

__all__ = ["provider_from_hf_config", "HF_ARCHITECTURES", "PROVIDER_TARGETS"]

logger = logging.getLogger(__name__)

# architectures -> model_type, as the Hugging Face view maps them
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
_BRIDGE = "megatron.bridge.models"
# The provider class upstream's bridge instantiates for each (what its run_config.yaml names).
PROVIDER_TARGETS = {
    "MistralForCausalLM": f"{_BRIDGE}.mistral.mistral_provider.MistralModelProvider",
}
_GPT_TARGET = f"{_BRIDGE}.gpt_provider.GPTModelProvider"

# What megatron-core's fused kernels need (CUDA); upstream's CPU import turns them off.
_CUDA_ONLY = ("gradient_accumulation_fusion", "masked_softmax_fusion", "bias_activation_fusion", "bias_dropout_fusion",
              "apply_rope_fusion", "persist_layer_norm", "cross_entropy_loss_fusion", "moe_grouped_gemm",
              "moe_permute_fusion", "moe_router_fusion")

# config.json field -> provider field (upstream's common mapping, the fields these architectures use)
_COMMON = (
    ("num_hidden_layers", "num_layers"),
    ("hidden_size", "hidden_size"),
    ("intermediate_size", "ffn_hidden_size"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_key_value_heads", "num_query_groups"),
    ("head_dim", "kv_channels"),
    ("vocab_size", "vocab_size"),
    ("max_position_embeddings", "seq_length"),
    ("rms_norm_eps", "layernorm_epsilon"),
    ("initializer_range", "init_method_std"),
    ("attention_dropout", "attention_dropout"),
    ("hidden_dropout", "hidden_dropout"),
    ("tie_word_embeddings", "share_embeddings_and_output_weights"),
    ("attention_bias", "add_qkv_bias"),
    ("mlp_bias", "add_bias_linear"),
    ("rope_theta", "rotary_base"),
    ("partial_rotary_factor", "rotary_percent"),
    ("num_experts", "num_moe_experts"),
    ("num_experts_per_tok", "moe_router_topk"),
    ("moe_intermediate_size", "moe_ffn_hidden_size"),
)
_REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
# transformers' defaults for fields a config.json may leave out
_DEFAULTS = {"rms_norm_eps": 1e-6, "initializer_range": 0.02, "max_position_embeddings": 2048, "rope_theta": 10000.0,
             "tie_word_embeddings": False}
_INT_FIELDS = {"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size", "max_position_embeddings", "num_experts", "num_experts_per_tok",
               "moe_intermediate_size", "sliding_window"}


def _refuse(path: Path, field: str, value: Any, why: str, architecture: str | None = None) -> UnmappableModelError:
    return UnmappableModelError(f"{path}: {field}={summarize(value)}: {why}", field=field, architecture=architecture,
                                path=path)


def _architecture(config: dict[str, Any], path: Path) -> str:
    if "auto_map" in config or config.get("trust_remote_code"):
        field = "auto_map" if "auto_map" in config else "trust_remote_code"
        raise _refuse(path, field, config[field], "the model asks for remote code, which is never run")
    archs = config.get("architectures")
    model_type = config.get("model_type")
    if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise _refuse(path, "architectures", archs, f"expected one of {', '.join(HF_ARCHITECTURES)} (a one-item list)")
    arch = archs[0]
    if arch not in HF_ARCHITECTURES:
        raise _refuse(path, "architectures", archs, f"not a supported architecture; supported: {', '.join(HF_ARCHITECTURES)}")
    if model_type != HF_ARCHITECTURES[arch]:
        raise _refuse(path, "model_type", model_type, f"{arch} has model_type {HF_ARCHITECTURES[arch]!r}", arch)
    return arch


def _dtype(config: dict[str, Any], path: Path) -> torch.dtype:
    value = config.get("torch_dtype") or config.get("dtype")
    if value is None:
        return torch.float32
    try:
        dtype = parse_dtype(value) if isinstance(value, str) else None
    except InvalidDtypeError:
        dtype = None
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        field = "torch_dtype" if config.get("torch_dtype") else "dtype"
        raise IncompatibleConfigError(f"{path}: {field}={summarize(value)} is not float32, bfloat16 or float16",
                                      path=path, field=field)
    return dtype


def _divisor(vocab_size: int) -> int:
    for d in (128, 64, 32, 16, 8, 4, 2):
        if vocab_size % d == 0:
            return d
    return 1


def _checked_values(config: dict[str, Any], path: Path) -> None:
    for key in _REQUIRED:
        if key not in config:
            raise CorruptCheckpointError(f"{path}: {key} is missing", path=path)
    for key in _INT_FIELDS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise IncompatibleConfigError(f"{path}: {key}={summarize(value)} should be a positive integer",
                                          path=path, field=key)


def provider_from_hf_config(config: dict[str, Any], *, path: str | os.PathLike, hf_model_id: str | None = None
                            ) -> GPTModelProvider:
    """Our provider for a parsed ``config.json`` (``path`` names it in errors). Its
    ``source_target`` is the Bridge provider class upstream's import records."""
    path = Path(path)
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path} should hold a JSON object, found {type(config).__name__}", path=path)
    arch = _architecture(config, path)
    _checked_values(config, path)
    values = {**_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    act = values.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse(path, "hidden_act", act, "only SiLU (SwiGLU) MLPs are mapped", arch)
    kw: dict[str, Any] = {}
    if arch == "MistralForCausalLM":  # upstream's Mistral bridge sets its fields itself
        names = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "initializer_range",
                 "rms_norm_eps", "num_key_value_heads", "max_position_embeddings", "rope_theta", "vocab_size",
                 "head_dim", "tie_word_embeddings")
        mapping = [(h, m) for h, m in _COMMON if h in names]
    else:
        mapping = list(_COMMON)
    for hf_name, field in mapping:
        if hf_name in values:
            kw[field] = values[hf_name]
    dtype = _dtype(config, path)
    kw.update(
        make_vocab_size_divisible_by=_divisor(kw["vocab_size"]), fp16=dtype == torch.float16,
        bf16=dtype == torch.bfloat16, params_dtype=dtype, activation_func=F.silu,
        normalization="RMSNorm", gated_linear_unit=True, position_embedding_type="rope", hidden_dropout=0.0,
        add_bias_linear=False if arch != "LlamaForCausalLM" else kw.get("add_bias_linear", False),
        hf_model_id=hf_model_id, transformer_layer_spec="local_layer_spec", use_cpu_initialization=True,
        # Bridge's GPTModelProvider defaults (megatron-core's differ); weights come from the files
        attention_softmax_in_fp32=False, deallocate_pipeline_outputs=True, perform_initialization=False,
    )
    if arch == "MistralForCausalLM":
        kw.setdefault("attention_dropout", 0.0)  # MistralModelProvider's default
    if kw["add_bias_linear"] or (arch in ("LlamaForCausalLM", "MistralForCausalLM") and kw.get("add_qkv_bias")):
        field = "mlp_bias" if kw["add_bias_linear"] else "attention_bias"
        raise _refuse(path, field, True, f"{arch} is mapped without linear biases", arch)
    scaling = values.get("rope_scaling")
    if scaling is not None:
        rope_type = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
        if arch != "LlamaForCausalLM" or rope_type != "llama3":
            raise _refuse(path, "rope_scaling", scaling, "only Llama 3 rope scaling (rope_type 'llama3') is mapped", arch)
    if arch == "LlamaForCausalLM":
        kw.update(rotary_percent=1.0)
        if scaling is not None:
            factor = scaling.get("factor", 8.0)
            # megatron-core fixes the other three; another value would change the model
            for key, want in (("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
                              ("original_max_position_embeddings", 8192)):
                if key in scaling and scaling[key] != want:
                    raise _refuse(path, f"rope_scaling.{key}", scaling[key],
                                  f"megatron-core applies Llama 3 rope scaling with {key}={want}", arch)
            kw.update(rope_scaling=True, rope_scaling_factor=factor)
    elif arch == "Qwen2ForCausalLM":
        kw.update(add_qkv_bias=True, autocast_dtype=torch.bfloat16)
    elif arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        kw.update(add_qkv_bias=False, qk_layernorm=True, autocast_dtype=torch.bfloat16)
        if config.get("attention_bias"):
            raise _refuse(path, "attention_bias", True, f"{arch} is mapped without q/k/v biases", arch)
    if arch.startswith("Qwen") and values.get("use_sliding_window"):
        raise _refuse(path, "use_sliding_window", True, "sliding-window attention is mapped for Mistral only", arch)
    if arch == "MistralForCausalLM" and values.get("sliding_window") is not None:
        kw.update(window_size=[values["sliding_window"], 0], cp_comm_type="a2a")
    if arch == "Qwen3MoeForCausalLM":
        if values.get("mlp_only_layers") or values.get("decoder_sparse_step", 1) != 1:
            field = "mlp_only_layers" if values.get("mlp_only_layers") else "decoder_sparse_step"
            raise _refuse(path, field, values[field], "only models whose every layer is sparse are mapped", arch)
        if values.get("norm_topk_prob", False) is not True:
            raise _refuse(path, "norm_topk_prob", values.get("norm_topk_prob", False),
                          "Megatron's router (softmax after top-k) renormalizes the top-k weights", arch)
        kw.update(moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=1e-3, moe_router_pre_softmax=False,
                  moe_token_dispatcher_type="allgather")
    elif kw.pop("num_moe_experts", None) is not None:
        raise _refuse(path, "num_experts", values["num_experts"], f"{arch} is a dense architecture", arch)
    for name in _CUDA_ONLY:
        kw[name] = False
    try:
        provider = GPTModelProvider(**kw)
    except (TypeError, ValueError, AssertionError, AttributeError) as e:
        raise IncompatibleConfigError(f"{path}: the model config cannot be built: {e}", path=path) from e
    provider.source_target = PROVIDER_TARGETS.get(arch, _GPT_TARGET)
    provider.hf_architecture = arch  # not a field either: which table the weights are read through
    return provider
