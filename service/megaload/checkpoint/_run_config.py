"""Megatron Bridge's ``run_config.yaml``: reading it without instantiating anything, and writing it.

Bridge serializes its config tree with Hydra-style markers: ``_target_`` names a class or
function, ``_call_: false`` means "the object itself", ``_partial_: true`` a functools.partial,
``_args_`` positional arguments. We never import what ``_target_`` names. Each marker we accept
is decoded through :data:`_TARGET_DECODERS` (a fixed table of known values); anything else is
either dropped with a warning (fields that do not affect the weights) or refused with
:class:`UnsupportedCheckpointError` (fields that do).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from ._errors import CorruptCheckpointError, IncompatibleConfigError, UnsupportedCheckpointError, summarize
from ._files import RUN_CONFIG_LIMIT, read_limited
from ._provider import GPT_PROVIDER_FIELDS, LAYER_SPECS, GPTModelProvider
from ._run_config_fields import check_field
from ._yaml import load_yaml

__all__ = [
    "read_run_config",
    "provider_from_run_config",
    "run_config_for_provider",
    "encode_value",
    "BRIDGE_GPT_PROVIDER_TARGET",
    "BRIDGE_LAYER_SPEC_MODULE",
]

logger = logging.getLogger(__name__)

BRIDGE_GPT_PROVIDER_TARGET = "megatron.bridge.models.gpt_provider.GPTModelProvider"
BRIDGE_LAYER_SPEC_MODULE = "megatron.bridge.models.gpt_provider"

# Fields whose value decides how weights are laid out or computed: an undecodable value there
# is refused instead of replaced by a default.
_ESSENTIAL_FIELDS = frozenset(
    {"activation_func", "params_dtype", "transformer_layer_spec", "pipeline_dtype", "autocast_dtype"}
)
# Fields holding callables or runtime objects that a loaded model never needs.
_RUNTIME_FIELDS = frozenset(
    {
        "init_method", "output_layer_init_method", "embedding_init_method", "timers",
        "finalize_model_grads_func", "grad_scale_func", "no_sync_func", "grad_sync_func",
        "param_sync_func", "fp8_quantizer_factory", "fp4_quantizer_factory", "quant_recipe",
    }
)


def _activation_table() -> dict[str, Callable]:
    from megatron.core import activations
    from megatron.core.transformer import utils as tutils

    table: dict[str, Callable] = {
        "torch._C._nn.gelu": F.gelu,
        "torch.nn.functional.gelu": F.gelu,
        "torch.nn.functional.silu": F.silu,
        "torch._C._nn.silu": F.silu,
        "torch.nn.functional.relu": F.relu,
        "torch.relu": torch.relu,
        "torch.nn.functional.tanh": torch.tanh,
        "torch.tanh": torch.tanh,
    }
    for module in (activations, tutils):
        for name in ("squared_relu", "quick_gelu", "fast_gelu", "openai_gelu", "erf_gelu"):
            fn = getattr(module, name, None)
            if fn is not None:
                table[f"{module.__name__}.{name}"] = fn
    try:
        from megatron.core.fusions import fused_bias_geglu

        table["megatron.core.fusions.fused_bias_geglu.quick_gelu"] = fused_bias_geglu.quick_gelu
    except ImportError:  # pragma: no cover
        pass
    return table


_INIT_FUNCTIONS = {
    f"torch.nn.init.{name}": getattr(torch.nn.init, name)
    for name in ("normal_", "uniform_", "xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "trunc_normal_",
                 "kaiming_uniform_", "kaiming_normal_", "constant_")
}
_DTYPES = {f"torch.{n}": getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "int8")}


def _enum_table() -> dict[str, type[enum.Enum]]:
    from megatron.core.transformer import enums

    return {
        f"{enums.__name__}.{name}": obj
        for name, obj in vars(enums).items()
        if isinstance(obj, type) and issubclass(obj, enum.Enum)
    }


class _Undecodable(Exception):
    pass


def _decode_marker(node: dict[str, Any]) -> Any:
    target = node.get("_target_")
    if not isinstance(target, str):
        raise _Undecodable(f"_target_ is {type(target).__name__}, not a string")
    call = node.get("_call_", True)
    partial = node.get("_partial_", False)
    args = node.get("_args_", []) or []
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    if target in _DTYPES and call is False:
        return _DTYPES[target]
    activations = _activation_table()
    if target in activations and call is False:
        return activations[target]
    if target in _INIT_FUNCTIONS:
        fn = _INIT_FUNCTIONS[target]
        if partial:
            return functools.partial(fn, *args, **kwargs)
        if call is False:
            return fn
    if target.startswith(BRIDGE_LAYER_SPEC_MODULE + ".") and call is False:
        name = target.rsplit(".", 1)[1]
        if name in LAYER_SPECS:
            return name
    enums = _enum_table()
    if target in enums and call is not False and len(args) == 1 and not kwargs:
        try:
            return enums[target](args[0])
        except ValueError as e:
            raise _Undecodable(f"{summarize(target)}({summarize(args[0])}) is not a member") from e
    raise _Undecodable(f"unknown target {summarize(target)}")


def read_run_config(path: str | Path) -> dict[str, Any]:
    """Parse ``run_config.yaml`` as ``yaml.safe_load`` does (no tags, no objects), within the
    size limit for a run config and the nesting and alias budgets of :mod:`._yaml`."""
    path = Path(path)
    raw = read_limited(path, RUN_CONFIG_LIMIT, kind="a run config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{path} is not UTF-8 text: {e}", path=path) from e
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise CorruptCheckpointError(f"{path} is not a usable YAML document: {e}", path=path) from e
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} should hold a mapping, found {type(data).__name__}", path=path)
    return data


def provider_from_run_config(run_config: dict[str, Any], *, path: str | Path) -> GPTModelProvider:
    """Build our :class:`GPTModelProvider` from the ``model:`` section of a Bridge run config."""
    model = run_config.get("model")
    if not isinstance(model, dict):
        raise CorruptCheckpointError(f"{path} has no 'model' section", path=path)
    target = str(model.get("_target_", ""))
    lowered = target.lower()
    if "mamba" in lowered or "hybrid" in lowered:
        raise UnsupportedCheckpointError(
            f"{path}: model provider {target} (Mamba/hybrid) needs Mamba kernels; only GPT-family providers "
            f"are built by this library",
            path=path,
        )
    if target and target != BRIDGE_GPT_PROVIDER_TARGET:
        if any(tag in lowered for tag in ("vl", "vision", "t5", "bert", "multimodal", "llava", "audio")):
            raise UnsupportedCheckpointError(f"{path}: model provider {target} is not a GPT-family model", path=path)
        logger.info("%s: treating model provider %s as a GPT model provider", path, target)

    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in model.items():
        if key.startswith("_"):
            continue
        if key not in GPT_PROVIDER_FIELDS:
            unknown.append(key)
            continue
        if isinstance(value, dict) and "_target_" in value:
            try:
                value = _decode_marker(value)
            except _Undecodable as e:
                if key in _ESSENTIAL_FIELDS:
                    raise UnsupportedCheckpointError(f"{path}: model.{key}: {e}", path=path) from e
                logger.warning("%s: model.%s: %s; using the default", path, key, e)
                continue
        elif key in _RUNTIME_FIELDS and value is not None:
            logger.warning("%s: model.%s holds %s, which cannot be restored; using the default", path, key, summarize(value))
            continue
        else:
            value = check_field(key, value, path)
        kwargs[key] = value
    if unknown:
        logger.warning("%s: ignoring model fields this library does not know: %s", path, ", ".join(sorted(unknown)))
    if kwargs.get("vocab_size") is None:
        raise IncompatibleConfigError(f"{path}: model.vocab_size is missing", path=path, field="vocab_size")
    try:
        provider = GPTModelProvider(**kwargs)
    except (TypeError, ValueError, AssertionError, AttributeError) as e:
        raise IncompatibleConfigError(f"{path}: model config cannot be built: {e}", path=path) from e
    # Which of Bridge's GPT-family providers wrote it (e.g. MistralModelProvider): not a field,
    # so a save still names our GPTModelProvider, whose fields upstream instantiates as they are.
    provider.source_target = target or BRIDGE_GPT_PROVIDER_TARGET
    return provider


# ---------------------------------------------------------------------------------------------
# writing


def _canonical_target(fn: Callable) -> str:
    """The name a function is written under: the first spelling the decoder table has for it
    (``torch.tanh``, not its ``torch._VariableFunctionsClass.tanh`` qualname), else its qualname."""
    for target, known in list(_activation_table().items()) + list(_INIT_FUNCTIONS.items()):
        if known is fn:
            return target
    return f"{fn.__module__}.{fn.__qualname__}"


def encode_value(value: Any) -> Any:
    """A YAML-safe form of one config value, with the markers Bridge's loader understands."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.dtype):
        return {"_target_": str(value), "_call_": False}
    if isinstance(value, enum.Enum):
        return {"_target_": f"{type(value).__module__}.{type(value).__qualname__}", "_call_": True, "_args_": [value.value]}
    if isinstance(value, functools.partial):
        fn = value.func
        out = {"_target_": _canonical_target(fn), "_partial_": True, "_args_": list(value.args)}
        out.update({k: encode_value(v) for k, v in value.keywords.items()})
        return out
    if callable(value) and hasattr(value, "__qualname__"):
        return {"_target_": _canonical_target(value), "_call_": False}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    raise TypeError(f"cannot encode {type(value).__name__}")


# Bridge provider classes that are GPTModelProvider with other defaults and no fields of their own:
# a save names them as read (an export of the save then knows the architecture it came from).
SAME_FIELD_PROVIDERS = frozenset({
    BRIDGE_GPT_PROVIDER_TARGET,
    "megatron.bridge.models.mistral.mistral_provider.MistralModelProvider",
})


def run_config_for_provider(provider: GPTModelProvider, tokenizer: dict[str, Any] | None, *, save_dir: str) -> dict[str, Any]:
    """The run config Bridge writes for a model-only save: the model section in full, the
    tokenizer section, and a checkpoint section describing the save."""
    target = getattr(provider, "source_target", BRIDGE_GPT_PROVIDER_TARGET)
    model: dict[str, Any] = {"_target_": target if target in SAME_FIELD_PROVIDERS else BRIDGE_GPT_PROVIDER_TARGET}
    for f in dataclasses.fields(provider):
        if f.name.startswith("_"):
            continue
        value = getattr(provider, f.name)
        if f.name == "transformer_layer_spec":
            model[f.name] = {"_target_": f"{BRIDGE_LAYER_SPEC_MODULE}.{value}", "_call_": False}
            continue
        if f.name in _RUNTIME_FIELDS and not isinstance(value, functools.partial):
            model[f.name] = None
            continue
        try:
            model[f.name] = encode_value(value)
        except TypeError:
            logger.warning("not saving model.%s (%s): no YAML form", f.name, type(value).__name__)
            model[f.name] = None
    return {
        "_target_": "megatron.bridge.training.config.ConfigContainer",
        "model": model,
        "tokenizer": tokenizer,
        "checkpoint": {
            "_target_": "megatron.bridge.training.config.CheckpointConfig",
            "ckpt_format": "torch_dist",
            "save": save_dir,
            "save_optim": False,
            "save_rng": False,
            "async_save": False,
            "fully_parallel_save": True,
        },
    }
