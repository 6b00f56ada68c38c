"""``load_model_config``: the model config a checkpoint was saved with.

- Megatron Bridge checkpoints: ``run_config.yaml`` -> our :class:`GPTModelProvider`, no args.
- Megatron-LM checkpoints: ``args`` (an ``argparse.Namespace``) in ``common.pt`` -> a
  megatron-core ``TransformerConfig`` built from the args, plus the Namespace itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from typing import Any

import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from ._errors import (
    CorruptCheckpointError,
    IncompatibleConfigError,
    NotACheckpointError,
    UnsupportedCheckpointError,
)
from ._layout import RUN_CONFIG_FILENAME, CheckpointFormat, inspect_layout
from ._pickle import load_common_state_dict
from ._provider import GPTModelProvider
from ._run_config import provider_from_run_config, read_run_config

__all__ = ["load_model_config", "transformer_config_from_args"]

logger = logging.getLogger(__name__)

# Megatron-LM argument -> TransformerConfig field, where the names differ.
_RENAMED_ARGS = {
    "norm_epsilon": "layernorm_epsilon",
    "apply_layernorm_1p": "layernorm_zero_centered_gamma",
    "num_experts": "num_moe_experts",
    "decoder_first_pipeline_num_layers": "num_layers_in_first_pipeline_stage",
    "decoder_last_pipeline_num_layers": "num_layers_in_last_pipeline_stage",
    "fp8_param_gather": "fp8_param",
}


def transformer_config_from_args(args: argparse.Namespace, *, path: str = "") -> TransformerConfig:
    """The TransformerConfig Megatron-LM builds from its arguments (model-relevant parts)."""
    if getattr(args, "multi_latent_attention", False):
        raise UnsupportedCheckpointError(f"{path}: multi-latent attention (MLA) models are not supported yet", path=path or None)
    if getattr(args, "heterogeneous_layers_config_path", None):
        raise UnsupportedCheckpointError(f"{path}: heterogeneous-layer models are not supported yet", path=path or None)
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    kw: dict[str, Any] = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    for arg_name, field_name in _RENAMED_ARGS.items():
        if hasattr(args, arg_name):
            kw[field_name] = getattr(args, arg_name)
    if hasattr(args, "no_persist_layer_norm"):
        kw["persist_layer_norm"] = not args.no_persist_layer_norm
    if hasattr(args, "overlap_p2p_comm"):
        kw["batch_p2p_comm"] = not args.overlap_p2p_comm
    if hasattr(args, "params_dtype"):
        kw["pipeline_dtype"] = args.params_dtype
    kw["deallocate_pipeline_outputs"] = True
    if getattr(args, "swiglu", False):
        kw["activation_func"] = F.silu
        kw["gated_linear_unit"] = True
        kw["bias_activation_fusion"] = getattr(args, "bias_swiglu_fusion", False)
    else:
        kw["bias_activation_fusion"] = getattr(args, "bias_gelu_fusion", False)
    if getattr(args, "squared_relu", False):
        from megatron.core.activations import squared_relu

        kw["activation_func"] = squared_relu
    if not getattr(args, "group_query_attention", False):
        kw["num_query_groups"] = None
    cp_comm_type = getattr(args, "cp_comm_type", None)
    if isinstance(cp_comm_type, (list, tuple)):
        if len(cp_comm_type) == 1:
            kw["cp_comm_type"] = cp_comm_type[0]
        else:
            kw.pop("cp_comm_type", None)
    # Quantization recipes and callables cannot be rebuilt from a saved Namespace safely.
    for runtime in ("quant_recipe", "init_method", "output_layer_init_method", "embedding_init_method"):
        kw.pop(runtime, None)
    try:
        return TransformerConfig(**kw)
    except (TypeError, ValueError, AssertionError, AttributeError) as e:
        raise IncompatibleConfigError(f"{path}: model config cannot be built from the saved args: {e}", path=path or None) from e


def load_model_config(checkpoint_path: str | os.PathLike) -> tuple[TransformerConfig, argparse.Namespace | None]:
    """The model config saved in a checkpoint, and the Megatron-LM args when there are some.

    ``checkpoint_path`` is an iteration directory or a save directory (its
    ``latest_checkpointed_iteration.txt`` is followed, ``release`` included), or a Hugging Face
    model directory (``config.json`` with ``model.safetensors`` or its index: the provider
    upstream's ``AutoBridge`` builds from it, no args). Returns a fresh object on every call:
    callers may change it freely.
    """
    from ._hf_dir import hf_model_dir

    hf_dir = hf_model_dir(checkpoint_path)
    if hf_dir is not None:
        from ._hf_load import hf_model_config

        return hf_model_config(hf_dir), None
    layout = inspect_layout(checkpoint_path)
    iter_dir = layout.iteration_dir
    if layout.format is CheckpointFormat.BRIDGE:
        path = iter_dir / RUN_CONFIG_FILENAME
        return provider_from_run_config(read_run_config(path), path=path), None
    common = load_common_state_dict(iter_dir)
    args = common.get("args")
    if args is None:
        raise NotACheckpointError(
            f"{iter_dir} has neither {RUN_CONFIG_FILENAME} (Megatron Bridge) nor 'args' in common.pt "
            f"(Megatron-LM): the model config cannot be known",
            path=iter_dir,
        )
    if not isinstance(args, argparse.Namespace):
        raise CorruptCheckpointError(
            f"{iter_dir}/common.pt: 'args' should be an argparse.Namespace, found {type(args).__name__}", path=iter_dir
        )
    return transformer_config_from_args(args, path=str(iter_dir)), args


def checkpoint_format(config: Any) -> CheckpointFormat:
    """BRIDGE for our provider, MEGATRON_LM for a bare TransformerConfig."""
    return CheckpointFormat.BRIDGE if isinstance(config, GPTModelProvider) else CheckpointFormat.MEGATRON_LM
