"""What each command does: ``handle(command, engine)``, one function per command class.

Handlers run on the engine's worker thread (rank 0) or in a follower's loop (other ranks),
always one at a time; they are the only code that calls the library (megatron, torch.distributed).
Every rank runs the same handler for a broadcast command, so collectives inside meet.
"""

from __future__ import annotations

import datetime
import gc
import logging
import time
from functools import singledispatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelNotFoundError
from ..jsonable import object_fields, to_jsonable
from . import commands as c
from ._model import LoadedModel, dir_bytes, dtype_of, model_type_of, numel, unique_nbytes, with_params_dtype
from ._process import freeze_heap

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["handle"]

logger = logging.getLogger(__name__)

_PARALLEL_FIELDS = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
)


@singledispatch
def handle(command: c.Command, engine: Engine) -> Any:
    raise TypeError(f"the engine has no handler for {type(command).__name__}")


@handle.register(c.Startup)
def _startup(command: c.Startup, engine: Engine) -> None:
    from megaload.checkpoint import initialize_distributed, initialize_model_parallel

    try:
        if engine.device == "cuda":
            import torch

            torch.cuda.set_device(engine.local_rank)
        from megatron.core import parallel_state

        initialize_distributed(
            engine.backend,
            world_size=engine.world_size,
            rank=engine.rank,
            timeout=datetime.timedelta(seconds=engine.collective_timeout_seconds),
        )
        engine.owns_context = True
        initialize_model_parallel(engine.tensor_model_parallel_size, engine.pipeline_model_parallel_size)
        engine.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        engine.pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    except BaseException as e:
        engine.mark_failed_start(e)
        raise
    freeze_heap()
    engine.mark_ready()


@handle.register(c.Shutdown)
def _shutdown(command: c.Shutdown, engine: Engine) -> None:
    from megaload.checkpoint import is_distributed_initialized, shutdown_distributed

    if not engine.owns_context:
        return
    if engine.world_size > 1 and engine.rank == 0 and is_distributed_initialized():
        if engine.failed:
            logger.warning("not telling the other ranks to shut down: the distributed context is broken")
            return
        try:
            engine.ranks.broadcast(command, fatal=False)
        except Exception as e:
            logger.warning("could not tell the other ranks to shut down: %s", e)
    engine.models.clear()
    engine.tokenizers.clear()
    gc.collect()
    if is_distributed_initialized():
        shutdown_distributed()
    engine.owns_context = False
    logger.info("distributed context torn down")


@handle.register(c.Heartbeat)
def _heartbeat(command: c.Heartbeat, engine: Engine) -> None:
    import torch.distributed as dist

    dist.barrier()


@handle.register(c.ModelConfig)
def _model_config(command: c.ModelConfig, engine: Engine) -> dict[str, Any]:
    from megaload.checkpoint import load_model_config

    config, mlm_args = load_model_config(command.path)
    return {
        "config_type": type(config).__name__,
        "model_type": model_type_of(config),
        "config": {k: to_jsonable(v) for k, v in object_fields(config).items()},
        "mlm_args": None if mlm_args is None else {k: to_jsonable(v) for k, v in object_fields(mlm_args).items()},
    }


@handle.register(c.HFView)
def _hf_view(command: c.HFView, engine: Engine) -> tuple[Any, dict[str, str]] | None:
    """Rank 0 only: the other ranks have nothing to serve."""
    if engine.rank != 0:
        return None
    from megaload.checkpoint import TokenizerError, load_model_config, tokenizer_files
    from megaload.hf import hf_view

    config, mlm_args = load_model_config(command.path)
    if command.dtype is not None:
        config = with_params_dtype(config, command.dtype)
    try:
        tokenizer = engine.tokenizers.get(command.path)
    except TokenizerError as e:
        logger.info("no tokenizer for the Hugging Face view of %s: %s", command.path, e)
        tokenizer = None
    view = hf_view(config, megatron_args=mlm_args, tokenizer=tokenizer)
    try:
        files = {name: str(p) for name, p in tokenizer_files(command.path).items()}
    except TokenizerError:
        files = {}
    return view, files


@handle.register(c.TensorMetadata)
def _tensor_metadata(command: c.TensorMetadata, engine: Engine) -> list[dict[str, Any]]:
    from megaload.checkpoint import read_tensor_metadata

    return [
        {
            "name": name,
            "shape": [int(d) for d in meta.shape],
            "dtype": str(meta.dtype).removeprefix("torch."),
            "size_bytes": numel(meta.shape) * meta.dtype.itemsize,
        }
        for name, meta in sorted(read_tensor_metadata(command.path).items())
    ]


@handle.register(c.EstimateBytes)
def _estimate_bytes(command: c.EstimateBytes, engine: Engine) -> int:
    from megaload.checkpoint import estimate_model_bytes, parse_dtype

    dtype = None if command.dtype is None else parse_dtype(command.dtype)
    return int(estimate_model_bytes(command.path, dtype=dtype))


@handle.register(c.Load)
def _load(command: c.Load, engine: Engine) -> LoadedModel:
    started = time.monotonic()
    model: list[Any] = []
    state_dict: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        model, state_dict = _load_local(command, engine)
    except BaseException as e:  # CheckpointException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        error = e
    directory = None
    if engine.world_size > 1:
        directory = _agree_on_load(command.path, model, state_dict, error, engine)
    metrics = engine.metrics
    if error is not None:
        if metrics is not None:
            metrics.checkpoint_loads.labels(outcome="failure").inc()
        raise error
    seconds = time.monotonic() - started
    local_bytes = unique_nbytes(state_dict.values())
    view: Any = state_dict
    sends: dict[str, str] = {}
    if directory is not None:
        from ..model_parallel import GatheredTensors, sent_by

        model_id = command.model_id
        view = GatheredTensors(directory, lambda name: engine.gather_blocking(model_id, name))
        sends = sent_by(directory).get(engine.rank, {})
    specs = view.specs if directory is not None else state_dict
    config = getattr(model[0], "config", None)
    loaded = LoadedModel(
        model_id=command.model_id,
        state_dict=view,
        parameter_count=sum(numel(t.shape) for t in specs.values()),
        size_bytes=local_bytes,
        dtype=dtype_of(specs.values()),
        model_type=command.model_type or model_type_of(config),
        config_type=type(config).__name__,
        load_seconds=seconds,
        model=model,
        local_state_dict=state_dict,
        directory=directory,
        sends=sends,
    )
    engine.models[command.model_id] = loaded
    if metrics is not None:
        metrics.checkpoint_loads.labels(outcome="success").inc()
        metrics.load_seconds.observe(seconds)
        metrics.checkpoint_bytes_read.inc(dir_bytes(Path(command.path)))
    logger.info("loaded %s as %s in %.2fs (%d bytes on this rank)", command.path, command.model_id, seconds, local_bytes)
    return loaded


def _load_local(command: c.Load, engine: Engine) -> tuple[list[Any], dict[str, Any]]:
    from megaload.checkpoint import load_megatron_model, model_state_dict, parse_dtype

    _check_overrides(command.mp_overrides, engine)
    target = None if command.dtype is None else parse_dtype(command.dtype)
    overrides = dict(command.mp_overrides or {})
    overrides["tensor_model_parallel_size"] = engine.tensor_model_parallel_size
    overrides["pipeline_model_parallel_size"] = engine.pipeline_model_parallel_size
    model = load_megatron_model(
        command.path,
        model_type=command.model_type,
        use_cpu_init=engine.device == "cpu",
        skip_temp_dist_context=True,
        mp_overrides=overrides,
    )
    if not isinstance(model, list):
        model = [model]
    if target is not None:
        for chunk in model:
            chunk.to(dtype=target)
    for chunk in model:
        chunk.eval()
        for p in chunk.parameters():
            p.requires_grad_(False)
    return model, model_state_dict(model)


def _agree_on_load(
    path: str, model: list[Any], state_dict: dict[str, Any], error: BaseException | None, engine: Engine
) -> Any:
    """Every rank learns every rank's outcome; a failure anywhere fails the load on all
    ranks (the new model is dropped, resident ones stay). Rank 0 returns the directory of
    the model's parts."""
    from megaload.checkpoint import padded_vocab_rows

    from ..model_parallel import Directory, agree, describe_local, first_failure

    parts = []
    if error is None:
        try:
            parts = describe_local(model, state_dict)
        except Exception as e:
            error = e
    outcomes = engine.ranks.collective(agree, engine.rank, engine.tp_rank, engine.pp_rank, error, parts)
    failure = first_failure(outcomes, path)
    if failure is not None:
        model.clear()
        state_dict.clear()
        raise error if error is not None else failure
    return Directory.build(outcomes, padded_vocab_rows(model, 1) if model else None)


def _check_overrides(mp_overrides: dict[str, Any] | None, engine: Engine) -> None:
    from megaload.checkpoint import IncompatibleConfigError

    if not mp_overrides:
        return
    have = {
        "tensor_model_parallel_size": engine.tensor_model_parallel_size,
        "pipeline_model_parallel_size": engine.pipeline_model_parallel_size,
    }
    for name in _PARALLEL_FIELDS:
        value = mp_overrides.get(name)
        if value is not None and value != have.get(name, 1):
            raise IncompatibleConfigError(
                f"mp_overrides.{name}={value} does not match this service's parallel layout "
                f"({name}={have.get(name, 1)}, world size {engine.world_size})",
                field=f"mp_overrides.{name}",
            )
    if mp_overrides.get("sequence_parallel") and engine.tensor_model_parallel_size == 1:
        raise IncompatibleConfigError(
            "mp_overrides.sequence_parallel needs tensor_model_parallel_size > 1",
            field="mp_overrides.sequence_parallel",
        )


@handle.register(c.GatherTensor)
def _gather_tensor(command: c.GatherTensor, engine: Engine) -> Any:
    from ..model_parallel import receive_full, send_part

    loaded = engine.models.get(command.model_id)
    if loaded is None or loaded.directory is None:
        raise ModelNotFoundError(command.model_id)
    if engine.rank == 0:
        return engine.ranks.collective(receive_full, loaded.directory, loaded.local_state_dict, command.tensor)
    engine.ranks.collective(send_part, engine.rank, loaded.local_state_dict, loaded.sends, command.tensor)
    return None


@handle.register(c.Release)
def _release(command: c.Release, engine: Engine) -> None:
    loaded = engine.models.pop(command.model_id, None)
    if loaded is None:
        return
    # Megatron modules hold no reference cycles: dropping the last references frees the
    # tensors at once. No gc.collect() here: a full collection holds the GIL long enough to
    # stall the event loop.
    loaded.state_dict.clear()
    loaded.local_state_dict.clear()
    loaded.model.clear()
    del loaded
    if engine.device == "cuda":
        import torch

        torch.cuda.empty_cache()


@handle.register(c.Save)
def _save(command: c.Save, engine: Engine) -> str:
    from megaload.checkpoint import save_megatron_model

    loaded = engine.models.get(command.model_id)
    if loaded is None:
        raise ModelNotFoundError(command.model_id)
    save_megatron_model(
        loaded.model,
        command.path,
        ckpt_format=command.ckpt_format,
        hf_tokenizer_path=command.hf_tokenizer_path,
        overwrite=command.overwrite,
    )
    return command.path


@handle.register(c.TokenizerInfo)
def _tokenizer_info(command: c.TokenizerInfo, engine: Engine) -> dict[str, Any]:
    tok = engine.tokenizers.get(command.path)
    special = {name: int(value) for name, value in tok.special_ids.items()}
    info: dict[str, Any] = {
        "tokenizer_type": tok.tokenizer_type,
        "vocab_size": int(tok.vocab_size),
        "special_ids": special,
    }
    for name in ("eod", "bos", "eos", "pad"):
        info[name] = special.get(name)
    return info


@handle.register(c.Tokenize)
def _tokenize(command: c.Tokenize, engine: Engine) -> dict[str, Any]:
    from megaload.checkpoint import TokenizerError

    tok = engine.tokenizers.get(command.path)
    try:
        ids = [int(i) for i in tok.tokenize(command.text)]
        back = tok.detokenize(ids) if command.detokenize else None
    except Exception as e:  # tokenizers raise anything (NullTokenizer: ValueError on words)
        raise TokenizerError(f"{tok.tokenizer_type} cannot tokenize this text: {e}", path=command.path) from e
    return {"ids": ids, "count": len(ids), "detokenized": None if back is None else str(back)}


