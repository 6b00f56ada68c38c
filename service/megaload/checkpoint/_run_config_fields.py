"""What a run config's ``model:`` values may be: one rule per field that decides the weights.

Megatron Bridge instantiates its provider from ``run_config.yaml`` with no type checks, so it
accepts whatever the dataclass and megatron-core's ``__post_init__`` accept: a float
``rotary_base: 1000000.0`` (how every Hugging Face import records it), ``null`` for sizes that
are derived later (``kv_channels``, ``ffn_hidden_size``, ``num_query_groups``), lists for
``window_size`` or ``moe_layer_freq``. We accept the same, and refuse only a value that
cannot be honoured by the model it describes: a size that is not a positive whole number, a
non-positive rope base, a normalization megatron-core does not build. Each refusal names the
file and the field. Fields without a rule are passed on unchecked (megatron-core's
``__post_init__`` judges them when the provider is built, and that error names the file too).

The rules, by kind (see :data:`FIELD_RULES`):

- positive integer: model sizes (layers, hidden, heads, vocabulary, sequence length, padding
  multiple, MoE router top-k); ``null`` is allowed where megatron-core derives the value
  (ffn size, kv channels, query groups, expert counts and sizes);
- positive number (int or float): ``rotary_base``, ``rope_scaling_factor``,
  ``layernorm_epsilon``, interpolation factors; ``rotary_percent`` in (0, 1];
- flag (bool; 0 and 1 are read as the bool they mean);
- one of a fixed set: ``normalization``, ``position_embedding_type``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import IncompatibleConfigError, summarize

__all__ = ["FIELD_RULES", "check_field"]

class _Refused(Exception):
    """A value that cannot be honoured; the message says what the field should be."""


@dataclass(frozen=True)
class FieldRule:
    """``check(value) -> value`` (normalized) or raise :class:`_Refused`; ``what`` describes
    the accepted values in error messages."""

    what: str
    check: Callable[[Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(optional: bool) -> FieldRule:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise _Refused

    return FieldRule("a positive integer" + (" or null" if optional else ""), check)


def _positive_number(optional: bool, *, at_most: float | None = None) -> FieldRule:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if _is_number(value) and math.isfinite(value) and value > 0 and (at_most is None or value <= at_most):
            return value
        raise _Refused

    bound = f" at most {at_most:g}" if at_most is not None else ""
    return FieldRule(f"a positive number{bound}" + (" or null" if optional else ""), check)


def _flag() -> FieldRule:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _Refused

    return FieldRule("true or false", check)


def _choice(*choices: str) -> FieldRule:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        raise _Refused

    return FieldRule(f"one of {', '.join(choices)}", check)


FIELD_RULES: dict[str, FieldRule] = {
    **{name: _positive_int(optional=False) for name in (
        "num_layers", "hidden_size", "num_attention_heads", "seq_length", "make_vocab_size_divisible_by",
        "moe_router_topk",
    )},
    **{name: _positive_int(optional=True) for name in (
        "vocab_size", "ffn_hidden_size", "kv_channels", "num_query_groups", "num_moe_experts",
        "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
    )},
    **{name: _positive_number(optional=False) for name in ("rotary_base", "rope_scaling_factor", "layernorm_epsilon")},
    **{name: _positive_number(optional=True) for name in ("seq_len_interpolation_factor", "rotary_scaling_factor")},
    "rotary_percent": _positive_number(optional=False, at_most=1.0),
    **{name: _flag() for name in (
        "share_embeddings_and_output_weights", "should_pad_vocab", "add_bias_linear", "add_qkv_bias",
        "gated_linear_unit", "qk_layernorm", "bf16", "fp16", "rope_scaling", "parallel_output",
        "fp16_lm_cross_entropy", "layernorm_zero_centered_gamma", "multi_latent_attention", "moe_grouped_gemm",
        "rotary_interleaved",
    )},
    "normalization": _choice("LayerNorm", "RMSNorm"),
    "position_embedding_type": _choice("learned_absolute", "rope", "yarn", "mrope", "none"),
}
"""Field -> rule, for the fields whose value decides how the weights are laid out or read."""


def check_field(key: str, value: Any, path: str | Path) -> Any:
    """``value`` as the provider takes it (bools normalized), or :class:`IncompatibleConfigError`
    naming ``path`` and ``model.<key>`` when it cannot be honoured. Unruled fields pass as they are."""
    rule = FIELD_RULES.get(key)
    if rule is None:
        return value
    try:
        return rule.check(value)
    except _Refused:
        raise IncompatibleConfigError(
            f"{path}: model.{key} should be {rule.what}, got {type(value).__name__} {summarize(value)}", path=path, field=key
        ) from None
