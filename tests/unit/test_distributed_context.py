"""Process-group handling: megatron_cpu_init_context and temporary_distributed_context.

Real single-process gloo groups throughout; nothing in torch.distributed is mocked.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer import TransformerConfig

from megaload.checkpoint import (
    CheckpointError,
    DistributedContextError,
    initialize_distributed,
    initialize_model_parallel,
    is_distributed_initialized,
    megatron_cpu_init_context,
    shutdown_distributed,
    temporary_distributed_context,
)


class BodyError(Exception):
    pass


@pytest.fixture(autouse=True)
def no_leftover_group(monkeypatch):
    """Every test starts and ends without a process group; none of them may bind a port."""
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not dist.is_initialized()
    yield
    leaked = dist.is_initialized()
    if leaked:  # do not poison the rest of the session
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    assert not leaked, "a process group was left behind"


def _torn_down() -> bool:
    return not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()


def _config(**kw) -> TransformerConfig:
    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, **kw)


# --- megatron_cpu_init_context -----------------------------------------------------------------


@pytest.mark.parametrize("initial", [False, True])
def test_cpu_init_context_sets_and_restores(initial):
    cfg = _config(use_cpu_initialization=initial)
    with megatron_cpu_init_context(cfg):
        assert cfg.use_cpu_initialization is True
    assert cfg.use_cpu_initialization is initial


def test_cpu_init_context_restores_when_body_raises():
    cfg = _config(use_cpu_initialization=False)
    with pytest.raises(BodyError):
        with megatron_cpu_init_context(cfg):
            assert cfg.use_cpu_initialization is True
            raise BodyError
    assert cfg.use_cpu_initialization is False


def test_cpu_init_context_needs_the_attribute():
    class NotAConfig:
        pass

    obj = NotAConfig()
    with pytest.raises(AttributeError):
        with megatron_cpu_init_context(obj):
            pass
    assert not hasattr(obj, "use_cpu_initialization")


# --- temporary_distributed_context -------------------------------------------------------------


def test_temporary_context_sets_up_a_world_of_one_and_tears_down():
    assert _torn_down()
    with temporary_distributed_context():
        assert dist.is_initialized()
        assert is_distributed_initialized()
        assert dist.get_world_size() == 1
        assert dist.get_rank() == 0
        assert dist.get_backend() == "gloo"
        assert parallel_state.model_parallel_is_initialized()
        assert parallel_state.get_tensor_model_parallel_world_size() == 1
        assert parallel_state.get_pipeline_model_parallel_world_size() == 1
        assert parallel_state.get_data_parallel_world_size() == 1
        # the group really works: a collective over gloo
        t = torch.tensor([3.0])
        dist.all_reduce(t)
        assert t.item() == 3.0
        box = [None]
        dist.broadcast_object_list(box, src=0)
        dist.barrier()
    assert _torn_down()
    assert not is_distributed_initialized()


def test_temporary_context_torn_down_when_body_raises():
    with pytest.raises(BodyError):
        with temporary_distributed_context():
            assert dist.is_initialized()
            raise BodyError("boom")
    assert _torn_down()


def test_temporary_context_sequential_uses_need_no_port():
    # MASTER_ADDR/MASTER_PORT are cleared by the autouse fixture: an env:// or tcp:// init
    # would fail; three rounds in a row show nothing is left bound or registered.
    for _ in range(3):
        with temporary_distributed_context():
            assert dist.get_world_size() == 1
            assert parallel_state.model_parallel_is_initialized()
        assert _torn_down()


def test_temporary_context_refuses_an_existing_default_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(DistributedContextError) as info:
            with temporary_distributed_context():
                pytest.fail("the body must not run")
        assert isinstance(info.value, RuntimeError)
        assert isinstance(info.value, CheckpointError)
        assert "already exists" in str(info.value)
        # the caller's group was not ours to destroy
        assert dist.is_initialized()
        t = torch.ones(1)
        dist.all_reduce(t)
        assert t.item() == 1.0
    finally:
        dist.destroy_process_group()


def test_temporary_context_unknown_backend():
    with pytest.raises(DistributedContextError) as info:
        with temporary_distributed_context("mpi"):
            pytest.fail("the body must not run")
    assert "mpi" in str(info.value)
    assert _torn_down()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_temporary_context_nccl_without_cuda_is_a_clear_error():
    with pytest.raises(DistributedContextError) as info:
        with temporary_distributed_context("nccl"):
            pytest.fail("the body must not run")
    assert "nccl" in str(info.value)
    assert _torn_down()


# --- the service's long-lived form -------------------------------------------------------------


def test_initialize_and_shutdown_distributed():
    initialize_distributed("gloo")
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1
        with pytest.raises(DistributedContextError):
            initialize_distributed("gloo")
        initialize_model_parallel()
        assert parallel_state.get_tensor_model_parallel_world_size() == 1
    finally:
        shutdown_distributed()
    assert _torn_down()
    shutdown_distributed()  # idempotent
    assert _torn_down()
