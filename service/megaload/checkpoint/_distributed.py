"""Process-group set-up for Megatron: the one place that initializes and tears down.

Two users:
- :func:`temporary_distributed_context` for library callers (single process, scoped);
- the service engine, which keeps one context for its whole life through
  :func:`initialize_distributed` / :func:`shutdown_distributed`.

A single-process group uses an in-process :class:`torch.distributed.HashStore`, so no TCP
port is ever chosen (and none can be raced for). Multi-process groups come from torchrun's
environment (``env://``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Generator
from typing import Any

import torch
import torch.distributed as dist

from ._errors import DistributedContextError

__all__ = [
    "megatron_cpu_init_context",
    "temporary_distributed_context",
    "initialize_distributed",
    "initialize_model_parallel",
    "shutdown_distributed",
    "is_distributed_initialized",
]

logger = logging.getLogger(__name__)

_BACKENDS = ("gloo", "nccl")


def is_distributed_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def initialize_distributed(
    backend: str = "gloo",
    *,
    world_size: int = 1,
    rank: int = 0,
    timeout: datetime.timedelta | None = None,
) -> None:
    """Create the default process group.

    ``world_size == 1`` uses an in-process store; larger worlds read torchrun's
    ``MASTER_ADDR``/``MASTER_PORT`` (``env://``). Raises :class:`DistributedContextError`
    if a default group already exists or the backend is unknown/unavailable.
    """
    if backend not in _BACKENDS:
        raise DistributedContextError(f"unknown distributed backend {backend!r}; expected one of {_BACKENDS}")
    if not dist.is_available():
        raise DistributedContextError("torch.distributed is not available in this torch build")
    if dist.is_initialized():
        raise DistributedContextError(
            "a default torch.distributed process group already exists; pass skip_temp_dist_context=True "
            "to load inside it, or destroy it first"
        )
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedContextError("backend 'nccl' needs CUDA, which this torch cannot use; use 'gloo'")
    kwargs: dict[str, Any] = {"backend": backend, "world_size": world_size, "rank": rank}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if world_size == 1:
        kwargs["store"] = dist.HashStore()
    else:
        kwargs["init_method"] = "env://"
    if backend == "nccl":
        torch.cuda.set_device(torch.cuda.current_device())
    dist.init_process_group(**kwargs)


def initialize_model_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    *,
    seed: int = 0,
) -> None:
    """Set up megatron-core's model-parallel state (and CUDA RNG tracker when on GPU)."""
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
    )
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown_distributed() -> None:
    """Destroy megatron's parallel state and the default process group (idempotent)."""
    from megatron.core import parallel_state

    try:
        parallel_state.destroy_model_parallel()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def temporary_distributed_context(backend: str = "gloo") -> Generator[None, None, None]:
    """Single-process group plus megatron model-parallel state, torn down on exit.

    Raises :class:`DistributedContextError` when a default process group already exists
    (it would not be ours to destroy).
    """
    initialize_distributed(backend)
    try:
        initialize_model_parallel()
        yield
    finally:
        shutdown_distributed()


@contextlib.contextmanager
def megatron_cpu_init_context(config: Any) -> Generator[None, None, None]:
    """Force ``config.use_cpu_initialization = True`` for the body; restore it afterwards,
    also when the body raises. The config must have a ``use_cpu_initialization`` attribute."""
    if not hasattr(config, "use_cpu_initialization"):
        raise AttributeError(f"{type(config).__name__} has no attribute 'use_cpu_initialization'")
    original = config.use_cpu_initialization
    config.use_cpu_initialization = True
    try:
        yield
    finally:
        config.use_cpu_initialization = original
