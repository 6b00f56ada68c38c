"""Building megatron-core models from a checkpoint's config and loading their weights.

Call order of :func:`load_megatron_model`::

    load_model_config(path)              -> config (a fresh copy) [+ Megatron-LM args]
    single_rank_config(config, ...)      -> parallel sizes reset, mp_overrides applied
    build_and_load_model(path, config)   -> (temporary process group if none exists)
        build_model(config, args)        -> list of GPTModel chunks (one per virtual stage)
        load_weights(model, iter_dir)    -> ``_reader.load_checkpoint``: megatron-core's
                                            dist_checkpointing.load with the allowlisted
                                            strategies and bounded metadata reads
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist

from ._config import load_model_config
from ._distributed import megatron_cpu_init_context, temporary_distributed_context
from ._dtypes import torch_dtype_from_mcore_config
from ._errors import (
    CheckpointError,
    IncompatibleConfigError,
    UnsupportedCheckpointError,
)
from ._extra_state import EXTRA_STATE
from ._hf_dir import hf_model_dir
from ._hf_load import fill_from_hf
from ._layout import inspect_layout
from ._provider import GPTModelProvider, gpt_layer_spec, padded_vocab_size
from ._weights import load_weights

# Set on each loaded chunk: where it came from (a later save carries the tokenizer and, for
# Megatron-LM checkpoints, the GPT fields of the saved args over).
SOURCE_ATTR = "_megaload_source"

__all__ = [
    "build_and_load_model",
    "load_megatron_model",
    "build_model",
    "load_weights",
    "model_state_dict",
    "model_config",
    "effective_model_type",
    "MP_OVERRIDE_FIELDS",
]

logger = logging.getLogger(__name__)

ModelType = Literal["gpt", "mamba"]

# Model-parallel settings a caller may override (Megatron Bridge's ModelParallelKwargs).
MP_OVERRIDE_FIELDS = frozenset(
    {
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "context_parallel_size",
        "sequence_parallel",
        "expert_model_parallel_size",
        "expert_tensor_parallel_size",
        "moe_extended_tp",
        "num_layers_in_first_pipeline_stage",
        "num_layers_in_last_pipeline_stage",
        "hierarchical_context_parallel_sizes",
    }
)

def _single_rank_config(config: Any, *, use_cpu_init: bool, mp_overrides: Mapping[str, Any] | None) -> Any:
    """Reset parallel sizes to one rank (as the reference does), then apply overrides."""
    config.tensor_model_parallel_size = 1
    config.pipeline_model_parallel_size = 1
    config.num_layers_in_first_pipeline_stage = None
    config.num_layers_in_last_pipeline_stage = None
    config.context_parallel_size = 1
    config.expert_model_parallel_size = 1
    config.expert_tensor_parallel_size = 1
    config.moe_extended_tp = False
    config.sequence_parallel = False
    config.perform_initialization = False
    config.virtual_pipeline_model_parallel_size = None
    config.hierarchical_context_parallel_sizes = None
    if use_cpu_init:
        config.fp8 = None
        config.fp8_param = False
    for key, value in (mp_overrides or {}).items():
        if key not in MP_OVERRIDE_FIELDS:
            raise IncompatibleConfigError(
                f"mp_overrides.{key} is not a model-parallel setting; allowed: {', '.join(sorted(MP_OVERRIDE_FIELDS))}",
                field=f"mp_overrides.{key}",
            )
        if value is not None:
            setattr(config, key, value)
    return config


def _infer_model_type(args: argparse.Namespace | None) -> ModelType:
    if args is not None and (getattr(args, "is_hybrid_model", False) or getattr(args, "hybrid_override_pattern", None)):
        return "mamba"
    return "gpt"


def effective_model_type(model_type: ModelType | None, megatron_args: argparse.Namespace | None) -> ModelType | None:
    """The ``model_type`` a load with ``model_type`` builds: for a Megatron-LM checkpoint (its
    saved ``megatron_args``) the one given, else the one inferred from the args; for a provider
    config (Megatron Bridge, Hugging Face; no args) ``None``, since the provider builds its own
    model and ``model_type`` is not used."""
    if megatron_args is None:
        return None
    return model_type or _infer_model_type(megatron_args)


def _check_parallel_state(config: Any) -> None:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        raise IncompatibleConfigError("megatron model-parallel state is not initialized in this process group")
    for field, getter in (
        ("tensor_model_parallel_size", parallel_state.get_tensor_model_parallel_world_size),
        ("pipeline_model_parallel_size", parallel_state.get_pipeline_model_parallel_world_size),
    ):
        want = getattr(config, field, 1) or 1
        have = getter()
        if want != have:
            raise IncompatibleConfigError(
                f"{field}={want} but the process group was set up with {have}; "
                f"a single-process load needs {field}=1",
                field=field,
            )


def _mlm_vocab_size(args: argparse.Namespace, tp: int) -> int:
    padded = getattr(args, "padded_vocab_size", None)
    divisible = getattr(args, "make_vocab_size_divisible_by", 128) or 1
    if isinstance(padded, int) and padded > 0 and padded % tp == 0:
        return padded
    vocab = getattr(args, "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= 0:
        raise IncompatibleConfigError("Megatron-LM args record neither padded_vocab_size nor vocab_size", field="vocab_size")
    return padded_vocab_size(vocab, divisible, tp)


def _build_mlm_gpt(config: Any, args: argparse.Namespace, pre_process: bool, post_process: bool, vp_stage):
    from megatron.core.models.gpt import GPTModel

    if getattr(args, "num_experts", None) and getattr(args, "moe_layer_freq", 1) not in (1, None):
        raise UnsupportedCheckpointError("MoE models with moe_layer_freq != 1 are not supported yet")
    if getattr(args, "mtp_num_layers", None):
        raise UnsupportedCheckpointError("multi-token-prediction (mtp_num_layers) models are not supported yet")
    if getattr(args, "experimental_attention_variant", None):
        raise UnsupportedCheckpointError("experimental attention variants are not supported yet")
    spec_name = "transformer_engine_layer_spec" if args.transformer_impl == "transformer_engine" else "local_layer_spec"
    spec = gpt_layer_spec(config, spec_name, normalization=getattr(args, "normalization", None))
    kwargs = {}
    if hasattr(args, "rope_scaling_factor"):
        kwargs["rope_scaling_factor"] = args.rope_scaling_factor
    return GPTModel(
        transformer_layer_spec=spec,
        **_mlm_model_kwargs(config, args, pre_process, post_process),
        rope_scaling=getattr(args, "use_rope_scaling", False),
        vp_stage=vp_stage,
        **kwargs,
    )


def _mlm_model_kwargs(config: Any, args: argparse.Namespace, pre_process: bool, post_process: bool) -> dict:
    """The arguments GPTModel and MambaModel take alike, from Megatron-LM's ``args``."""
    return dict(
        config=config,
        vocab_size=_mlm_vocab_size(args, config.tensor_model_parallel_size),
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        fp16_lm_cross_entropy=getattr(args, "fp16_lm_cross_entropy", False),
        parallel_output=True,
        share_embeddings_and_output_weights=not getattr(args, "untie_embeddings_and_output_weights", False),
        position_embedding_type=args.position_embedding_type,
        rotary_percent=getattr(args, "rotary_percent", 1.0),
        rotary_base=getattr(args, "rotary_base", 10000),
    )


def _build_mlm_mamba(config: Any, args: argparse.Namespace, pre_process: bool, post_process: bool, vp_stage):
    try:
        import mamba_ssm  # noqa: F401
        from megatron.core.models.mamba import MambaModel
        from megatron.core.models.mamba.mamba_layer_specs import mamba_stack_spec
    except ImportError as e:
        raise UnsupportedCheckpointError(
            f"Mamba/hybrid models need the mamba_ssm and causal_conv1d kernels, which are not installed here ({e})"
        ) from e
    return MambaModel(
        mamba_stack_spec=mamba_stack_spec,
        hybrid_attention_ratio=getattr(args, "hybrid_attention_ratio", 0.0),
        hybrid_mlp_ratio=getattr(args, "hybrid_mlp_ratio", 0.0),
        hybrid_override_pattern=getattr(args, "hybrid_override_pattern", None),
        **_mlm_model_kwargs(config, args, pre_process, post_process),
    )


def build_model(config: Any, *, model_type: ModelType | None = None, megatron_args: argparse.Namespace | None = None) -> list:
    """Instantiate the model chunks for this rank (no weights loaded)."""
    from megatron.core import parallel_state, tensor_parallel

    vp = config.virtual_pipeline_model_parallel_size if parallel_state.get_pipeline_model_parallel_world_size() > 1 else None
    stages = list(range(vp)) if vp else [None]
    chunks = []
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
        if isinstance(config, GPTModelProvider):
            chunk = config.provide(pre_process=pre, post_process=post, vp_stage=vp_stage)
        else:
            if megatron_args is None:
                raise IncompatibleConfigError("megatron_args are required for a Megatron-LM config", field="megatron_args")
            kind = model_type or _infer_model_type(megatron_args)
            if kind == "gpt":
                chunk = _build_mlm_gpt(config, megatron_args, pre, post, vp_stage)
            elif kind == "mamba":
                chunk = _build_mlm_mamba(config, megatron_args, pre, post, vp_stage)
            else:
                raise IncompatibleConfigError(f"model_type must be 'gpt' or 'mamba', got {kind!r}", field="model_type")
        _match_mixed_precision(chunk, config, megatron_args)
        for param in chunk.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
        chunks.append(chunk)
    return chunks


def _match_mixed_precision(chunk: torch.nn.Module, config: Any, megatron_args: argparse.Namespace | None) -> None:
    """Put every floating parameter and buffer of a bf16/fp16 model in that dtype, as upstream's
    builders do by wrapping the model in megatron-core's ``Float16Module`` (Megatron Bridge's
    ``get_model`` when ``config.bf16``/``fp16``, its Megatron-LM path when ``args.bf16``/``fp16``).

    megatron-core builds linear layers and embeddings in ``params_dtype`` but its local-spec norms
    (``torch.nn.LayerNorm``/``RMSNorm`` through ``WrappedTorchNorm``) and learned position
    embeddings in float32 whatever ``params_dtype`` says; without this a bf16 checkpoint's norms
    would be read into, and served as, float32. What megatron-core keeps in float32 on purpose
    (the MoE router's expert bias, ``_maintain_float32_expert_bias``) is restored as upstream does.
    Casting a tensor that already has the dtype is a no-op, so only those modules are copied.
    """
    source = megatron_args if megatron_args is not None else config
    if getattr(source, "bf16", False):
        chunk.bfloat16()
    elif getattr(source, "fp16", False):
        chunk.half()
    else:
        return
    for module in chunk.modules():
        keep_float32 = getattr(module, "_maintain_float32_expert_bias", None)
        if callable(keep_float32):
            keep_float32()


def _build_for(checkpoint_path, config: Any, model_type, megatron_args) -> list:
    """:func:`build_model`, with megatron-core's construction errors turned into one typed error
    that names the checkpoint (its config is what could not be built)."""
    where = os.fspath(checkpoint_path)
    try:
        return build_model(config, model_type=model_type, megatron_args=megatron_args)
    except IncompatibleConfigError as e:
        if where in str(e):
            raise
        raise IncompatibleConfigError(f"{where}: {e}", path=where, field=e.field) from e
    except CheckpointError:
        raise
    except Exception as e:  # megatron-core raises bare Exception, RuntimeError, ZeroDivisionError...
        raise IncompatibleConfigError(
            f"{where}: the model cannot be built from its config: {type(e).__name__}: {e}", path=where
        ) from e


def build_and_load_model(
    checkpoint_path: str | os.PathLike,
    model_cfg: Any,
    model_type: ModelType | None = None,
    megatron_args: argparse.Namespace | None = None,
    return_state_dict: bool = False,
    use_cpu_init: bool = False,
    skip_temp_dist_context: bool | None = None,
):
    """Build the model described by ``model_cfg`` and load its weights from ``checkpoint_path``.

    ``model_cfg`` is not modified: the model gets a copy (with ``params_dtype`` matching the
    bf16/fp16 flags). Without a process group, a temporary single-process one is created
    (gloo with ``use_cpu_init``, nccl otherwise; gloo and CPU init when CUDA is unavailable).
    Returns the list of model chunks, or with ``return_state_dict`` the full state dict
    ``{"model": {...}, "checkpoint_version": ..., ...}`` without ``_extra_state`` entries.
    ``checkpoint_path`` may be a Hugging Face model directory: its safetensors files are read
    one tensor at a time into the built model (``{"model": {...}}`` with ``return_state_dict``).
    """
    if model_type not in (None, "gpt", "mamba"):
        raise IncompatibleConfigError(f"model_type must be 'gpt' or 'mamba', got {model_type!r}", field="model_type")
    if not isinstance(model_cfg, GPTModelProvider) and megatron_args is None:
        raise IncompatibleConfigError(
            "megatron_args are required when model_cfg comes from a Megatron-LM checkpoint", field="megatron_args"
        )
    if not use_cpu_init and not torch.cuda.is_available():
        logger.warning("CUDA is not available: initializing the model on CPU with the gloo backend")
        use_cpu_init = True
    hf_dir = hf_model_dir(checkpoint_path)
    config = copy.copy(model_cfg)
    target = torch_dtype_from_mcore_config(config)
    if config.params_dtype != target:
        logger.info("params_dtype %s -> %s (bf16/fp16 flags)", config.params_dtype, target)
        config.params_dtype = target
    if skip_temp_dist_context is None:
        skip_temp_dist_context = dist.is_available() and dist.is_initialized()
    context = (
        contextlib.nullcontext() if skip_temp_dist_context
        else temporary_distributed_context("gloo" if use_cpu_init else "nccl")
    )
    with context:
        _check_parallel_state(config)
        init = megatron_cpu_init_context(config) if use_cpu_init else contextlib.nullcontext()
        with init:
            model = _build_for(checkpoint_path, config, model_type, megatron_args)
        if hf_dir is not None:
            state = fill_from_hf(model, hf_dir, config, return_state_dict=return_state_dict)
            source = {"iteration_dir": None, "hf_dir": hf_dir, "args": None}
        else:
            state = load_weights(model, checkpoint_path, return_state_dict=return_state_dict)
            source = {"iteration_dir": inspect_layout(checkpoint_path).iteration_dir, "args": megatron_args}
        for chunk in model:
            setattr(chunk, SOURCE_ATTR, source)
        if return_state_dict:
            del model
            return state
        if dist.is_initialized():
            dist.barrier()
        return model


def load_megatron_model(
    checkpoint_path: str | os.PathLike,
    model_type: ModelType | None = None,
    return_state_dict: bool = False,
    use_cpu_init: bool = False,
    skip_temp_dist_context: bool | None = None,
    mp_overrides: Mapping[str, Any] | None = None,
):
    """Load a model from a checkpoint: :func:`load_model_config` then :func:`build_and_load_model`.

    Parallel sizes saved in the checkpoint are reset to a single rank, then ``mp_overrides``
    (model-parallel fields only; others raise IncompatibleConfigError) are applied.
    ``model_type`` is inferred for Megatron-LM checkpoints when not given.
    """
    config, args = load_model_config(checkpoint_path)
    _single_rank_config(config, use_cpu_init=use_cpu_init or not torch.cuda.is_available(), mp_overrides=mp_overrides)
    if args is not None and model_type is None:
        model_type = _infer_model_type(args)
    return build_and_load_model(
        checkpoint_path, config, model_type, args, return_state_dict, use_cpu_init, skip_temp_dist_context
    )


def model_state_dict(model: list | Any) -> dict[str, torch.Tensor]:
    """Flat, tensors-only state dict of a loaded model, keyed like a flattened
    ``return_state_dict`` result (``model.decoder.layers.0...``; ``model0.``/``model1.`` for
    virtual-pipeline chunks). Values are the model's own tensors (detached, not copies)."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    out: dict[str, torch.Tensor] = {}
    for i, chunk in enumerate(chunks):
        prefix = "model." if len(chunks) == 1 else f"model{i}."
        for name, value in chunk.state_dict(keep_vars=False).items():
            if EXTRA_STATE in name or not isinstance(value, torch.Tensor):
                continue
            out[prefix + name] = value
    return out


def model_config(model: list | Any) -> Any:
    """The config a loaded model was built with."""
    from megatron.core.utils import get_model_config

    chunks = model if isinstance(model, (list, tuple)) else [model]
    return get_model_config(chunks[0])
