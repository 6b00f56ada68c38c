"""The load options a model id is made from: the ones the load applies, after defaults.

A load request may spell out what it would get anyway (``model_type="gpt"`` for a Megatron-LM
GPT checkpoint, where ``gpt`` is inferred; ``dtype`` equal to the checkpoint's own; a parallel
size equal to the service's layout). The model id hashes the options, so such a request must
name them as the load will apply them, or the same model gets a second id and a second
resident copy. :func:`effective_load_options` rewrites them so; every rewrite is one that leaves
the loaded model unchanged:

``model_type``
    Megatron-LM: the one given, else the one inferred from the saved args (``gpt`` unless
    the args describe a hybrid/Mamba model). Megatron Bridge and Hugging Face: ``None``, the
    provider in the checkpoint builds the model and ``model_type`` is not used.
``dtype``
    ``None`` when it equals the dtype the model is built in (``bf16``/``fp16`` flags of the
    checkpoint's config, else float32): casting to it changes nothing.
``mp_overrides``
    Entries equal to what a single-rank load on this service's layout sets anyway are dropped:
    ``tensor_model_parallel_size``/``pipeline_model_parallel_size`` equal to the service's,
    ``context_parallel_size``/``expert_model_parallel_size``/``expert_tensor_parallel_size``
    of 1, ``sequence_parallel`` false. Other values are kept for the engine to refuse.

Reading the config costs a few milliseconds (``common.pt`` or ``run_config.yaml``); it is
cached per iteration directory and file fingerprint. A checkpoint whose config cannot be read
keeps the options as given: the load itself then reports the error (as a failed job for
``wait=false``).
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    confined_to,
    effective_model_type,
    load_model_config,
    torch_dtype_from_mcore_config,
)

__all__ = ["effective_load_options"]

logger = logging.getLogger(__name__)

_SINGLE_RANK_DEFAULTS: dict[str, Any] = {
    "context_parallel_size": 1,
    "expert_model_parallel_size": 1,
    "expert_tensor_parallel_size": 1,
    "sequence_parallel": False,
}


@functools.lru_cache(maxsize=64)
def _checkpoint_defaults(
    iteration_dir: str, fingerprint: tuple[int, ...], roots: tuple[str, ...]
) -> tuple[argparse.Namespace | None, str]:
    """(the saved Megatron-LM args or None, the dtype the model is built in) of a checkpoint's
    files: read once per fingerprint, whatever ``model_type`` the requests spell (only read)."""
    with confined_to(roots):
        config, args = load_model_config(iteration_dir)
    return args, str(torch_dtype_from_mcore_config(config)).removeprefix("torch.")


def effective_load_options(
    iteration_dir: Path,
    fingerprint: tuple[int, ...],
    model_type: str | None,
    dtype: str | None,
    mp_overrides: dict[str, Any],
    *,
    tensor_model_parallel_size: int,
    pipeline_model_parallel_size: int,
    checkpoint_roots: Iterable[str | Path],
) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(model_type, dtype, mp_overrides)`` as the load applies them (module docstring).
    ``dtype`` is a canonical torch name (``"bfloat16"``) or ``None``. Runs in a worker thread."""
    defaults = {
        **_SINGLE_RANK_DEFAULTS,
        "tensor_model_parallel_size": tensor_model_parallel_size,
        "pipeline_model_parallel_size": pipeline_model_parallel_size,
    }
    overrides = {k: v for k, v in mp_overrides.items() if k not in defaults or v != defaults[k]}
    roots = tuple(str(r) for r in checkpoint_roots)
    try:
        args, native = _checkpoint_defaults(str(iteration_dir), fingerprint, roots)
    except CheckpointError as e:
        logger.debug("load options of %s kept as given: %s", iteration_dir, e)
        return model_type, dtype, overrides
    return effective_model_type(model_type, args), None if dtype == native else dtype, overrides  # type: ignore[arg-type]
