"""What a Megatron model is, read once from its config: :func:`model_facts`.

Two sources of config: our :class:`~megaload.checkpoint.GPTModelProvider` (Megatron Bridge
run configs) carries everything; a Megatron-LM ``TransformerConfig`` needs the saved args
``Namespace`` for the GPT-level settings (positions, rotary base, vocabulary, tied embeddings).
:class:`ModelFacts` is the same description for both, in the terms a Hugging Face config uses.

Features that no supported Hugging Face architecture can express are refused here with
:class:`~megaload.checkpoint.UnmappableModelError` naming the Megatron field; what depends on
the architecture is checked in :mod:`._architectures`.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import (
    GPTModelProvider,
    IncompatibleConfigError,
    UnmappableModelError,
    torch_dtype_from_mcore_config,
)

__all__ = ["ModelFacts", "model_facts", "LLAMA3_ROPE_DEFAULTS"]

logger = logging.getLogger(__name__)

LLAMA3_ROPE_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The Llama 3 rope-scaling constants megatron-core applies (only the factor is configurable)."""


@dataclass(frozen=True)
class ModelFacts:
    """A GPT model in Hugging Face terms (sizes, rotary settings, tied embeddings, MoE...).

    ``vocab_size`` is the true vocabulary (rows kept on export); ``vocab_source`` says where it
    came from. ``special_ids`` holds the tokenizer's ``bos``/``eos``/``pad`` ids that exist.
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    vocab_source: str
    max_position_embeddings: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tied_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    sliding_window: int | None
    num_experts: int | None
    moe_topk: int | None
    moe_ffn_hidden_size: int | None
    moe_norm_topk_prob: bool | None
    moe_aux_loss_coeff: float | None
    dtype: torch.dtype
    init_std: float
    attention_dropout: float
    special_ids: dict[str, int] = field(default_factory=dict)
    source: str = "bridge"

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)


def _refuse(field_name: str, message: str) -> UnmappableModelError:
    return UnmappableModelError(f"{field_name}: {message}; no supported Hugging Face architecture expresses this", field=field_name)


class _Reader:
    """Reads a field from the provider, or for Megatron-LM from the args where the GPT model
    takes it from there (and from the TransformerConfig otherwise)."""

    _FROM_ARGS = {
        "position_embedding_type": "position_embedding_type",
        "rotary_base": "rotary_base",
        "rotary_percent": "rotary_percent",
        "rope_scaling": "use_rope_scaling",
        "rope_scaling_factor": "rope_scaling_factor",
        "seq_len_interpolation_factor": "rotary_seq_len_interpolation_factor",
        "seq_length": "max_position_embeddings",
    }

    def __init__(self, config: Any, args: argparse.Namespace | None) -> None:
        self.config = config
        self.args = args

    def get(self, name: str, default: Any = None) -> Any:
        if self.args is not None and name in self._FROM_ARGS:
            return getattr(self.args, self._FROM_ARGS[name], default)
        return getattr(self.config, name, default)


_DEFAULT_OFF = {
    # field: (value meaning "off", what it is)
    "layernorm_zero_centered_gamma": (False, "zero-centred norm weights (gamma + 1)"),
    "rotary_interleaved": (False, "interleaved rotary embedding"),
    "multi_latent_attention": (False, "multi-latent attention (MLA)"),
    "add_bias_linear": (False, "biases on every linear layer"),
    "apply_residual_connection_post_layernorm": (False, "residual connection after the norm"),
    "qk_l2_norm": (False, "L2 norm of queries and keys"),
    "attention_output_gate": (False, "gated attention output"),
    "no_rope_freq": (None, "layers without rotary embedding"),
    "experimental_attention_variant": (None, "an experimental attention variant"),
    "window_attn_skip_freq": (None, "sliding window on some layers only"),
    "is_hybrid_model": (False, "a hybrid (Mamba) model"),
    "heterogeneous_block_specs": (False, "heterogeneous layers"),
    "mtp_num_layers": (None, "multi-token prediction layers"),
    "activation_func_clamp_value": (None, "a clamped activation"),
    "glu_linear_offset": (0.0, "an offset on the GLU's linear half"),
    "moe_shared_expert_intermediate_size": (None, "shared experts"),
    "moe_router_enable_expert_bias": (False, "an expert bias in the router"),
    "moe_apply_probs_on_input": (False, "router probabilities applied to the expert input"),
    "moe_latent_size": (None, "latent MoE projections"),
}


def _check_common(read: _Reader) -> None:
    normalization = read.get("normalization", "LayerNorm")
    if normalization != "RMSNorm":
        raise _refuse("normalization", f"{normalization} (Hugging Face Llama/Qwen/Mistral models use RMSNorm)")
    position = read.get("position_embedding_type", "learned_absolute")
    if position != "rope":
        raise _refuse("position_embedding_type", f"{position!r} positions (supported: 'rope')")
    for name, (off, what) in _DEFAULT_OFF.items():
        value = read.get(name, off)
        if not (value == off or (not value and not off)):
            raise _refuse(name, f"{what} ({name}={value!r})")
    percent = read.get("rotary_percent", 1.0)
    if percent is not None and float(percent) != 1.0:
        raise _refuse("rotary_percent", f"partial rotary embedding (rotary_percent={percent})")
    if not read.get("gated_linear_unit", False):
        raise _refuse("gated_linear_unit", "an ungated MLP (the architectures use a SwiGLU MLP)")
    activation = read.get("activation_func", None)
    if activation is not F.silu:
        name = getattr(activation, "__name__", repr(activation))
        raise _refuse("activation_func", f"activation {name} (the architectures use SiLU in a SwiGLU MLP)")
    softmax_type = read.get("softmax_type", "vanilla")
    if softmax_type not in (None, "vanilla"):
        raise _refuse("softmax_type", f"{softmax_type!r} softmax")
    if read.get("moe_layer_freq", 1) not in (1, None) and read.get("num_moe_experts", None):
        raise _refuse("moe_layer_freq", f"dense and MoE layers mixed (moe_layer_freq={read.get('moe_layer_freq')!r})")


def _head_dim(read: _Reader, hidden: int, heads: int) -> int:
    kv_channels = read.get("kv_channels", None)
    head_dim = int(kv_channels) if kv_channels else hidden // heads
    scale = read.get("softmax_scale", None)
    if scale is not None and not math.isclose(float(scale), head_dim**-0.5, rel_tol=1e-6):
        raise _refuse("softmax_scale", f"attention scale {scale} (Hugging Face models scale by head_dim ** -0.5)")
    return head_dim


def _rope_scaling(read: _Reader) -> dict[str, Any] | None:
    interpolation = read.get("seq_len_interpolation_factor", None)
    if read.get("rope_scaling", False):
        if interpolation not in (None, 1, 1.0):
            raise _refuse("seq_len_interpolation_factor", "Llama 3 rope scaling and position interpolation together")
        factor = float(read.get("rope_scaling_factor", 8.0))
        return {"rope_type": "llama3", "factor": factor, **LLAMA3_ROPE_DEFAULTS}
    if interpolation not in (None, 1, 1.0):
        return {"rope_type": "linear", "factor": float(interpolation)}
    return None


def _sliding_window(read: _Reader) -> int | None:
    window = read.get("window_size", None)
    if window is None:
        return None
    try:
        left, right = (int(w) for w in window)
    except (TypeError, ValueError):
        raise _refuse("window_size", f"window {window!r} (expected (left, 0))") from None
    if left < 0:
        return None
    if right != 0:
        raise _refuse("window_size", f"window {window!r} looks at later tokens (expected (left, 0))")
    # Megatron attends to `left` tokens before and the token itself; HF's sliding_window counts both.
    return left + 1


def _moe(read: _Reader) -> tuple[int | None, int | None, int | None, bool | None, float | None]:
    experts = read.get("num_moe_experts", None)
    if not experts:
        return None, None, None, None, None
    score = read.get("moe_router_score_function", "softmax")
    if score != "softmax":
        raise _refuse("moe_router_score_function", f"router scores by {score!r} (supported: softmax)")
    scaling = read.get("moe_router_topk_scaling_factor", None)
    if scaling not in (None, 1, 1.0):
        raise _refuse("moe_router_topk_scaling_factor", f"scaled routing weights ({scaling})")
    if read.get("moe_router_num_groups", None):
        raise _refuse("moe_router_num_groups", "group-limited routing")
    topk = int(read.get("moe_router_topk", 2))
    ffn = read.get("moe_ffn_hidden_size", None) or read.get("ffn_hidden_size")
    # softmax over the top-k logits (pre_softmax False) == softmax, top-k, renormalized.
    norm_topk_prob = not bool(read.get("moe_router_pre_softmax", False))
    aux = read.get("moe_aux_loss_coeff", None)
    return int(experts), topk, int(ffn), norm_topk_prob, (float(aux) if aux is not None else None)


def _true_vocab(config: Any, args: argparse.Namespace | None, tokenizer: Any) -> tuple[int, str]:
    tokenizer_size = getattr(tokenizer, "vocab_size", None) if tokenizer is not None else None
    if isinstance(config, GPTModelProvider):
        if config.vocab_size is None:
            raise IncompatibleConfigError("the model config has no vocab_size", field="vocab_size")
        if tokenizer_size is not None and tokenizer_size > config.vocab_size:
            logger.warning("the tokenizer has %d tokens but the model config's vocab_size is %d",
                           tokenizer_size, config.vocab_size)
        return int(config.vocab_size), "vocab_size"
    vocab = getattr(args, "vocab_size", None)
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
        return vocab, "args.vocab_size"
    if isinstance(tokenizer_size, int) and tokenizer_size > 0:
        return tokenizer_size, "tokenizer"
    padded = getattr(args, "padded_vocab_size", None)
    if isinstance(padded, int) and padded > 0:
        logger.warning("neither args.vocab_size nor a tokenizer: keeping all %d (padded) vocabulary rows", padded)
        return padded, "args.padded_vocab_size"
    raise IncompatibleConfigError("the Megatron-LM args record no vocabulary size", field="vocab_size")


def _special_ids(tokenizer: Any) -> dict[str, int]:
    if tokenizer is None:
        return {}
    known = dict(getattr(tokenizer, "special_ids", {}) or {})
    out = {name: int(known[name]) for name in ("bos", "eos", "pad") if name in known}
    if "eos" not in out and "eod" in known:
        out["eos"] = int(known["eod"])  # Megatron's end-of-document token ends generation
    return out


def model_facts(config: Any, *, megatron_args: argparse.Namespace | None = None, tokenizer: Any = None) -> ModelFacts:
    """The :class:`ModelFacts` of a Bridge provider or a Megatron-LM config and its args.

    Raises UnmappableModelError (naming the field) for what no supported Hugging Face
    architecture can express, IncompatibleConfigError for a Megatron-LM config without args.
    """
    if not isinstance(config, GPTModelProvider) and megatron_args is None:
        raise IncompatibleConfigError(
            "a Megatron-LM TransformerConfig needs its args Namespace (megatron_args) for the GPT settings",
            field="megatron_args",
        )
    read = _Reader(config, None if isinstance(config, GPTModelProvider) else megatron_args)
    _check_common(read)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    groups = int(config.num_query_groups or heads)
    experts, topk, moe_ffn, norm_topk, aux = _moe(read)
    vocab, vocab_source = _true_vocab(config, megatron_args, tokenizer)
    if isinstance(config, GPTModelProvider):
        tied = bool(config.share_embeddings_and_output_weights)
        max_positions = int(config.seq_length)
    else:
        tied = not bool(getattr(megatron_args, "untie_embeddings_and_output_weights", False))
        max_positions = int(getattr(megatron_args, "max_position_embeddings", None) or getattr(megatron_args, "seq_length"))
    return ModelFacts(
        num_layers=int(config.num_layers),
        hidden_size=hidden,
        ffn_hidden_size=int(config.ffn_hidden_size),
        num_attention_heads=heads,
        num_query_groups=groups,
        head_dim=_head_dim(read, hidden, heads),
        vocab_size=vocab,
        vocab_source=vocab_source,
        max_position_embeddings=max_positions,
        norm_eps=float(config.layernorm_epsilon),
        rope_theta=float(read.get("rotary_base", 10000)),
        rope_scaling=_rope_scaling(read),
        tied_embeddings=tied,
        qkv_bias=bool(getattr(config, "add_qkv_bias", False)),
        qk_norm=bool(getattr(config, "qk_layernorm", False)),
        sliding_window=_sliding_window(read),
        num_experts=experts,
        moe_topk=topk,
        moe_ffn_hidden_size=moe_ffn,
        moe_norm_topk_prob=norm_topk,
        moe_aux_loss_coeff=aux,
        dtype=torch_dtype_from_mcore_config(config) if (config.bf16 or config.fp16) else config.params_dtype,
        init_std=float(getattr(config, "init_method_std", 0.02)),
        attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
        special_ids=_special_ids(tokenizer),
        source="bridge" if isinstance(config, GPTModelProvider) else "megatron-lm",
    )
