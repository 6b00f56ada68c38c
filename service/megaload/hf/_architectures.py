"""The supported Hugging Face architectures, each a declarative table of tensor mappings.

A table lists the Hugging Face tensors in the order transformers registers them (the order
``save_pretrained`` writes), each with the Megatron tensor it comes from (a :class:`Source`:
its spellings, canonical first, its shape in named dimensions, and the :mod:`._transforms`
transform relating the two) and which part of it. The same table read the other way groups
Hugging Face tensors by source to rebuild Megatron's fused tensors.

Names hold ``{layer}`` and ``{expert}`` placeholders. Megatron spellings: the local layer spec
first (what :func:`megaload.checkpoint.model_state_dict` returns), then Transformer Engine's
(norms fused into the following linear layer, grouped experts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint import UnmappableModelError
from ._facts import ModelFacts
from ._transforms import COPY, GLU, QKV, VOCAB, Transform

__all__ = ["Source", "Entry", "Architecture", "ARCHITECTURES", "choose_architecture", "architecture_named"]


@dataclass(frozen=True)
class Source:
    """One Megatron tensor: its spellings (canonical first), transform and shape in named dims
    (``vocab`` is at least the true vocabulary: padded rows are allowed)."""

    names: tuple[str, ...]
    transform: Transform
    dims: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """One Hugging Face tensor: its name, its source and which part of the source it is."""

    hf: str
    source: Source
    part: str = ""


def _src(names: str | tuple[str, ...], transform: Transform, *dims: str) -> Source:
    return Source((names,) if isinstance(names, str) else tuple(names), transform, tuple(dims))


_L = "decoder.layers.{layer}."
_H = "model.layers.{layer}."

EMBEDDING = _src("embedding.word_embeddings.weight", VOCAB, "vocab", "hidden")
FINAL_NORM = _src("decoder.final_layernorm.weight", COPY, "hidden")
OUTPUT = _src("output_layer.weight", VOCAB, "vocab", "hidden")
QKV_WEIGHT = _src(_L + "self_attention.linear_qkv.weight", QKV, "qkv", "hidden")
QKV_BIAS = _src(_L + "self_attention.linear_qkv.bias", QKV, "qkv")
PROJ = _src(_L + "self_attention.linear_proj.weight", COPY, "hidden", "q")
Q_NORM = _src(_L + "self_attention.q_layernorm.weight", COPY, "head_dim")
K_NORM = _src(_L + "self_attention.k_layernorm.weight", COPY, "head_dim")
INPUT_NORM = _src((_L + "input_layernorm.weight", _L + "self_attention.linear_qkv.layer_norm_weight"), COPY, "hidden")
MLP_NORM = _src((_L + "pre_mlp_layernorm.weight", _L + "mlp.linear_fc1.layer_norm_weight"), COPY, "hidden")
FC1 = _src(_L + "mlp.linear_fc1.weight", GLU, "ffn2", "hidden")
FC2 = _src(_L + "mlp.linear_fc2.weight", COPY, "hidden", "ffn")
ROUTER = _src(_L + "mlp.router.weight", COPY, "experts", "hidden")
EXPERT_FC1 = _src(
    (_L + "mlp.experts.local_experts.{expert}.linear_fc1.weight", _L + "mlp.experts.linear_fc1.weight{expert}"),
    GLU, "moe_ffn2", "hidden",
)
EXPERT_FC2 = _src(
    (_L + "mlp.experts.local_experts.{expert}.linear_fc2.weight", _L + "mlp.experts.linear_fc2.weight{expert}"),
    COPY, "hidden", "moe_ffn",
)

def _attention(*, bias: bool) -> tuple[Entry, ...]:
    """q, k, v (each with its bias when ``bias``) and the output projection."""
    entries = []
    for part in ("q", "k", "v"):
        entries.append(Entry(_H + f"self_attn.{part}_proj.weight", QKV_WEIGHT, part))
        if bias:
            entries.append(Entry(_H + f"self_attn.{part}_proj.bias", QKV_BIAS, part))
    return (*entries, Entry(_H + "self_attn.o_proj.weight", PROJ))


def _glu_mlp(prefix: str, fc1: Source, fc2: Source) -> tuple[Entry, ...]:
    """A gated MLP's gate, up and down projections under ``prefix``."""
    return (
        Entry(prefix + "gate_proj.weight", fc1, "gate"),
        Entry(prefix + "up_proj.weight", fc1, "up"),
        Entry(prefix + "down_proj.weight", fc2),
    )


_ATTENTION = _attention(bias=False)
_ATTENTION_QKV_BIAS = _attention(bias=True)
_QK_NORM = (
    Entry(_H + "self_attn.q_norm.weight", Q_NORM),
    Entry(_H + "self_attn.k_norm.weight", K_NORM),
)
_DENSE_MLP = _glu_mlp(_H + "mlp.", FC1, FC2)
_ROUTER = (Entry(_H + "mlp.gate.weight", ROUTER),)
_EXPERT = _glu_mlp(_H + "mlp.experts.{expert}.", EXPERT_FC1, EXPERT_FC2)
_NORMS = (
    Entry(_H + "input_layernorm.weight", INPUT_NORM),
    Entry(_H + "post_attention_layernorm.weight", MLP_NORM),
)


@dataclass(frozen=True)
class Architecture:
    """A Hugging Face architecture: what it requires of the Megatron model, its config.json,
    and its tensor table (``layer`` entries repeat per layer, ``expert`` entries per expert
    inside each layer after ``layer``'s, ``layer_tail`` after the experts)."""

    name: str
    model_type: str
    qkv_bias: bool = False
    qk_norm: bool = False
    moe: bool = False
    sliding_window: bool = False
    layer: tuple[Entry, ...] = ()
    expert: tuple[Entry, ...] = ()
    layer_tail: tuple[Entry, ...] = _NORMS
    extra_config: Callable[[ModelFacts], dict[str, Any]] = field(default=lambda f: {}, repr=False)

    # -- what the model must be --------------------------------------------------------------
    def check(self, facts: ModelFacts) -> None:
        """UnmappableModelError naming the Megatron field this architecture cannot express."""

        def refuse(field_name: str, value: Any, message: str) -> UnmappableModelError:
            return UnmappableModelError(
                f"{self.name}: {field_name}={value!r}: {message}", field=field_name, architecture=self.name
            )

        if facts.qkv_bias != self.qkv_bias:
            has = "has q/k/v biases" if facts.qkv_bias else "has no q/k/v biases"
            raise refuse("add_qkv_bias", facts.qkv_bias,
                         f"the model {has}; {self.name} {'has them' if self.qkv_bias else 'has none'}")
        if facts.qk_norm != self.qk_norm:
            does = "normalizes" if facts.qk_norm else "does not normalize"
            raise refuse("qk_layernorm", facts.qk_norm,
                         f"the model {does} queries and keys; {self.name} {'does' if self.qk_norm else 'does not'}")
        if facts.is_moe != self.moe:
            kind = "a mixture-of-experts model" if facts.is_moe else "a dense model"
            raise refuse("num_moe_experts", facts.num_experts, f"{kind} cannot be a {self.name}")
        if facts.sliding_window is not None and not self.sliding_window:
            raise refuse("window_size", facts.sliding_window - 1,
                         f"sliding-window attention ({facts.sliding_window} tokens) is not in {self.name}")

    # -- config.json -------------------------------------------------------------------------
    def config_json(self, facts: ModelFacts) -> dict[str, Any]:
        dtype = dtype_name(facts.dtype)
        config: dict[str, Any] = {
            "architectures": [self.name],
            "model_type": self.model_type,
            "vocab_size": facts.vocab_size,
            "hidden_size": facts.hidden_size,
            "intermediate_size": facts.ffn_hidden_size,
            "num_hidden_layers": facts.num_layers,
            "num_attention_heads": facts.num_attention_heads,
            "num_key_value_heads": facts.num_query_groups,
            "head_dim": facts.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": facts.max_position_embeddings,
            "initializer_range": facts.init_std,
            "rms_norm_eps": facts.norm_eps,
            "rope_theta": facts.rope_theta,
            "rope_scaling": dict(facts.rope_scaling) if facts.rope_scaling else None,
            "tie_word_embeddings": facts.tied_embeddings,
            "attention_dropout": facts.attention_dropout,
            "use_cache": True,
            # transformers < 4.56 reads torch_dtype, later versions dtype
            "torch_dtype": dtype,
            "dtype": dtype,
        }
        for name in ("bos", "eos", "pad"):
            if name in facts.special_ids:
                config[f"{name}_token_id"] = facts.special_ids[name]
        config.update(self.extra_config(facts))
        return config

    # -- tensors -----------------------------------------------------------------------------
    def entries(self, facts: ModelFacts) -> Iterator[tuple[str, Source, str, dict[str, int]]]:
        """Every Hugging Face tensor of the model in save_pretrained order:
        (HF name, source, part, placeholder values)."""
        yield "model.embed_tokens.weight", EMBEDDING, "", {}
        for layer in range(facts.num_layers):
            at = {"layer": layer}
            for entry in self.layer:
                yield entry.hf.format(**at), entry.source, entry.part, at
            for expert in range(facts.num_experts or 0) if self.expert else ():
                at_e = {"layer": layer, "expert": expert}
                for entry in self.expert:
                    yield entry.hf.format(**at_e), entry.source, entry.part, at_e
            for entry in self.layer_tail:
                yield entry.hf.format(**at), entry.source, entry.part, at
        yield "model.norm.weight", FINAL_NORM, "", {}
        if not facts.tied_embeddings:
            yield "lm_head.weight", OUTPUT, "", {}

    def dim_sizes(self, facts: ModelFacts) -> dict[str, int]:
        d = facts.head_dim
        sizes = {
            "hidden": facts.hidden_size,
            "head_dim": d,
            "q": facts.num_attention_heads * d,
            "qkv": (facts.num_attention_heads + 2 * facts.num_query_groups) * d,
            "ffn": facts.ffn_hidden_size,
            "ffn2": 2 * facts.ffn_hidden_size,
            "vocab": facts.vocab_size,
        }
        if facts.is_moe:
            sizes.update(experts=facts.num_experts, moe_ffn=facts.moe_ffn_hidden_size,
                         moe_ffn2=2 * facts.moe_ffn_hidden_size)
        return sizes


def _llama_extra(f: ModelFacts) -> dict[str, Any]:
    return {"attention_bias": False, "mlp_bias": False}


def _mistral_extra(f: ModelFacts) -> dict[str, Any]:
    return {"sliding_window": f.sliding_window}


def _qwen2_extra(f: ModelFacts) -> dict[str, Any]:
    return {"use_sliding_window": False, "sliding_window": None, "max_window_layers": f.num_layers}


def _qwen3_extra(f: ModelFacts) -> dict[str, Any]:
    return {"attention_bias": False, **_qwen2_extra(f)}


def _qwen3_moe_extra(f: ModelFacts) -> dict[str, Any]:
    extra = {
        **_qwen3_extra(f),
        "num_experts": f.num_experts,
        "num_experts_per_tok": f.moe_topk,
        "moe_intermediate_size": f.moe_ffn_hidden_size,
        "norm_topk_prob": f.moe_norm_topk_prob,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
    }
    if f.moe_aux_loss_coeff is not None:
        extra["router_aux_loss_coef"] = f.moe_aux_loss_coeff
    return extra


LLAMA = Architecture("LlamaForCausalLM", "llama", layer=_ATTENTION + _DENSE_MLP, extra_config=_llama_extra)
MISTRAL = Architecture("MistralForCausalLM", "mistral", sliding_window=True, layer=_ATTENTION + _DENSE_MLP,
                       extra_config=_mistral_extra)
QWEN2 = Architecture("Qwen2ForCausalLM", "qwen2", qkv_bias=True, layer=_ATTENTION_QKV_BIAS + _DENSE_MLP,
                     extra_config=_qwen2_extra)
QWEN3 = Architecture("Qwen3ForCausalLM", "qwen3", qk_norm=True, layer=_ATTENTION + _QK_NORM + _DENSE_MLP,
                     extra_config=_qwen3_extra)
QWEN3_MOE = Architecture("Qwen3MoeForCausalLM", "qwen3_moe", qk_norm=True, moe=True,
                         layer=_ATTENTION + _QK_NORM + _ROUTER, expert=_EXPERT, extra_config=_qwen3_moe_extra)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (LLAMA, MISTRAL, QWEN2, QWEN3, QWEN3_MOE)}


def architecture_named(name: str) -> Architecture:
    """The architecture called ``name`` (``Qwen2ForCausalLM``) or of model type ``name`` (``qwen2``)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    for arch in ARCHITECTURES.values():
        if arch.model_type == name:
            return arch
    raise UnmappableModelError(
        f"unknown Hugging Face architecture {name!r}; supported: {', '.join(ARCHITECTURES)}", field="architecture"
    )


def choose_architecture(facts: ModelFacts, name: str | None = None, *, hint: str | None = None) -> Architecture:
    """The architecture named, else the ``hint`` when it can hold the model, else the one the
    model's features select; checked against the model."""
    if name is not None:
        arch = architecture_named(name)
    elif hint is not None and hint in ARCHITECTURES and _holds(ARCHITECTURES[hint], facts):
        arch = ARCHITECTURES[hint]
    elif facts.is_moe:
        arch = QWEN3_MOE
    elif facts.qk_norm:
        arch = QWEN3
    elif facts.qkv_bias:
        arch = QWEN2
    elif facts.sliding_window is not None:
        arch = MISTRAL
    else:
        arch = LLAMA
    arch.check(facts)
    return arch


def _holds(arch: Architecture, facts: ModelFacts) -> bool:
    try:
        arch.check(facts)
    except UnmappableModelError:
        return False
    return True


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, as config.json spells dtypes."""
    return str(dtype).removeprefix("torch.")
