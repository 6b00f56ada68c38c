"""How a checkpoint's stored tensor names relate to the keys a loaded model streams.

A distributed checkpoint stores megatron-core's *sharded* keys: no ``model.`` prefix, the
layers of the decoder stacked into one tensor per parameter (``decoder.layers.<param>`` with
the layer as the leading dimension), the experts of an MoE layer stacked once more
(``mlp.experts.experts.<param>``, expert after layer), and the layer norms under the names
Transformer Engine fuses them with (``self_attention.linear_qkv.layer_norm_weight``,
``mlp.linear_fc1.layer_norm_weight``). A loaded model streams its state dict (built with the
local layer spec on every host, see :func:`~._provider.gpt_layer_spec`): one tensor per layer
and expert, under the module names. :func:`stream_key` gives, for a stored GPT tensor, the
template of the keys it becomes, with ``{layer}`` (and ``{expert}``) standing for the leading
dimensions: ``decoder.layers.mlp.linear_fc1.layer_norm_weight [4, 128]`` becomes
``model.decoder.layers.{layer}.pre_mlp_layernorm.weight``, four tensors of shape ``[128]``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["stream_key", "with_stream_keys", "STORED_NAMING", "HF_NAMING"]

STORED_NAMING = (
    "names and shapes as stored in the checkpoint (megatron-core's sharded keys), not the keys a loaded "
    "model streams (GET /v1/models/{id}/state_dict): decoder layers are stacked, the layer being the leading "
    "dimension (MoE experts the next), and layer norms are stored under Transformer Engine's fused names. "
    "stream_key is the template of the streamed keys of each tensor, '{layer}' and '{expert}' standing for "
    "indices of those leading dimensions (e.g. decoder.layers.mlp.linear_fc1.layer_norm_weight [4, 128] "
    "streams as model.decoder.layers.{layer}.pre_mlp_layernorm.weight, 4 tensors of [128]); null where the "
    "model's names do not follow from the stored one (Mamba/hybrid models, the layers of grouped-GEMM MoE models, "
    "whose names depend on the host's kernels, a config that cannot be read)"
)
"""``CheckpointTensors.naming`` of a Megatron-LM or Megatron Bridge checkpoint."""

HF_NAMING = (
    "Hugging Face names and shapes as in the directory's safetensors files; a loaded model streams these "
    "names with names=hf, and megatron-core's keys (fused q/k/v and gate/up, model.decoder.layers.N...) by "
    "default, so stream_key is null"
)
"""``CheckpointTensors.naming`` of a Hugging Face model directory."""

_LAYERS = "decoder.layers."
_EXPERTS = "mlp.experts.experts."
_FUSED_NORMS = (
    ("self_attention.linear_qkv.layer_norm_", "input_layernorm."),
    ("mlp.linear_fc1.layer_norm_", "pre_mlp_layernorm."),
)
_TOP_LEVEL = ("embedding.", "decoder.final_layernorm.", "output_layer.")


def stream_key(
    name: str, shape: list[int] | tuple[int, ...], config: Any, args: argparse.Namespace | None
) -> str | None:
    """The template of the keys a stored tensor ``name`` streams as (module docstring), or
    ``None`` where that does not follow from the name: Mamba/hybrid models, the layers of
    grouped-GEMM MoE models (built with Transformer Engine's spec on a host that has TE but not
    the ``grouped_gemm`` kernels, see :func:`~._provider.gpt_layer_spec`), names outside the
    GPT model (``mtp.``...)."""
    if args is not None and (getattr(args, "is_hybrid_model", False) or getattr(args, "hybrid_override_pattern", None)):
        return None
    if name.startswith(_TOP_LEVEL):
        return "model." + name
    if not name.startswith(_LAYERS) or len(shape) < 1:
        return None
    if getattr(config, "num_moe_experts", None) and getattr(config, "moe_grouped_gemm", False):
        return None  # on a host with TE but not the grouped_gemm kernels these build TE's spec (its names)
    param = name[len(_LAYERS) :]
    for stored, module in _FUSED_NORMS:
        if param.startswith(stored):
            return f"model.{_LAYERS}{{layer}}.{module}{param[len(stored):]}"
    if param.startswith(_EXPERTS):
        if len(shape) < 2:
            return None
        return f"model.{_LAYERS}{{layer}}.mlp.experts.local_experts.{{expert}}.{param[len(_EXPERTS):]}"
    return f"model.{_LAYERS}{{layer}}.{param}"


def with_stream_keys(checkpoint_path: str | os.PathLike, tensors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``(naming, tensors)`` for ``CheckpointTensors``: each ``{"name", "shape", ...}`` entry of
    :func:`~._reader.read_tensor_metadata`'s listing with its ``stream_key`` added (reads the
    checkpoint's config; run it confined to the checkpoint roots)."""
    from ._config import load_model_config
    from ._errors import CheckpointError
    from ._hf_dir import hf_model_dir

    if hf_model_dir(checkpoint_path) is not None:
        return HF_NAMING, [{**t, "stream_key": None} for t in tensors]
    try:
        config, args = load_model_config(checkpoint_path)
    except CheckpointError:  # the listing stands on its own; a load would report the config's error
        return STORED_NAMING, [{**t, "stream_key": None} for t in tensors]
    return STORED_NAMING, [{**t, "stream_key": stream_key(t["name"], t["shape"], config, args)} for t in tensors]
