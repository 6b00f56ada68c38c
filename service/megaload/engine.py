"""The engine: the one owner of torch.distributed and of every megatron call.

One worker thread runs commands strictly in the order they were submitted. The event loop
submits a command and awaits its future, so it never runs heavy work itself::

    engine = Engine(device="auto", backend="auto", metrics=metrics)
    engine.start()                       # thread starts; first command builds the context
    await engine.wait_ready()            # READY, or raises NotReadyError with the cause
    info = await engine.load(model_id, iteration_dir, ...)
    ...
    engine.shutdown(grace_seconds=30)    # blocking: cancels queued commands, waits for the
                                         # running one, destroys the process group

Commands are engine methods named ``_op_<name>`` taking picklable keyword arguments, so that
under torchrun rank 0 can broadcast ``(name, kwargs)`` and every rank runs the same command
(:meth:`Engine.follow` is the loop of the other ranks). Models live in the engine, keyed by
model id; the registry holds their :class:`LoadedModel` handles.

Life cycle (:class:`EngineState`): starting -> ready -> stopping -> stopped, or
starting -> failed when the context cannot be built.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import gc
import logging
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .devices import resolve_backend, resolve_device
from .errors import EngineStoppedError, NotReadyError
from .jsonable import object_fields, to_jsonable

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Engine", "EngineState", "LoadedModel"]

logger = logging.getLogger(__name__)

_STOP = object()
_MAX_TOKENIZERS = 8
_PARALLEL_FIELDS = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
)


class EngineState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class LoadedModel:
    """A model resident in the engine. ``state_dict`` holds zero-copy views of its tensors."""

    model_id: str
    state_dict: dict[str, Any]
    parameter_count: int
    size_bytes: int
    dtype: str
    model_type: str | None
    config_type: str
    load_seconds: float
    model: list[Any] = field(repr=False, default_factory=list)
    # Multi-rank models: this rank's own tensors, rank 0's directory of every rank's parts
    # (``state_dict`` is then a GatheredTensors) and, on other ranks, what this one sends.
    local_state_dict: dict[str, Any] = field(repr=False, default_factory=dict)
    directory: Any = field(repr=False, default=None)
    sends: dict[str, str] = field(repr=False, default_factory=dict)


class Engine:
    """Runs library calls on one thread, in order; see the module docstring."""

    def __init__(
        self,
        *,
        device: str = "auto",
        backend: str = "auto",
        world_size: int = 1,
        rank: int = 0,
        local_rank: int = 0,
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        collective_timeout_seconds: float = 300.0,
        metrics: Metrics | None = None,
        checkpoint_roots: Sequence[Path] | None = None,
        save_roots: Sequence[Path] = (),
    ) -> None:
        self.device = resolve_device(device)
        # Every file a command reads lies inside these (the library checks what checkpoints
        # name: data files, tokenizer files, symlinks); a save also reads what it writes.
        self._read_roots = None if checkpoint_roots is None else tuple(checkpoint_roots)
        self._save_read_roots = None if checkpoint_roots is None else (*checkpoint_roots, *save_roots)
        self.backend = resolve_backend(backend, self.device)
        self.world_size = world_size
        self.rank = rank
        self.local_rank = local_rank
        self.tensor_model_parallel_size = tensor_parallel
        self.pipeline_model_parallel_size = pipeline_parallel
        self.collective_timeout_seconds = collective_timeout_seconds
        # Rank 0 pings the other ranks when idle, well within the collective timeout, so that a
        # follower waiting for the next command never times out and a dead one is noticed.
        self.heartbeat_seconds = max(1.0, min(30.0, collective_timeout_seconds / 4))
        self.tp_rank = 0
        self.pp_rank = 0
        self.metrics = metrics
        self.state = EngineState.STARTING
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._models: dict[str, LoadedModel] = {}
        self._owns_context = False  # only a context this engine built is torn down by it
        self._tokenizers: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.running: str | None = None  # name of the command being run, for logs and /v1/info

    # ------------------------------------------------------------------ life cycle

    def start(self) -> concurrent.futures.Future:
        """Start the worker thread; its first command initializes the distributed context."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._loop, name="megaload-engine", daemon=True)
        self._thread.start()
        return self._submit("startup", {})

    async def wait_ready(self) -> None:
        """Return once READY; raise :class:`NotReadyError` if start-up failed or we stop."""
        while not self._ready.is_set():
            if self.state in (EngineState.FAILED, EngineState.STOPPING, EngineState.STOPPED):
                break
            await asyncio.sleep(0.01)
        self.check_ready()

    def check_ready(self) -> None:
        if self.state is EngineState.READY:
            return
        if self.state is EngineState.FAILED:
            raise NotReadyError(f"the engine failed to start: {self.error}", retry_after=None)
        if self.state is EngineState.STARTING:
            raise NotReadyError("the distributed context is still starting", retry_after=1)
        raise EngineStoppedError()

    def shutdown(self, grace_seconds: float = 30.0) -> bool:
        """Blocking. Cancel queued commands, let the running one finish within ``grace_seconds``,
        then tear the distributed context down. Returns False if a command had to be abandoned
        (the worker is a daemon thread; the library's saves are atomic, so nothing half-written
        is left at a destination)."""
        with self._lock:
            if self.state in (EngineState.STOPPING, EngineState.STOPPED):
                return True
            self.state = EngineState.STOPPING
            cancelled = self._drain_queue()
            if self._thread is not None:
                self._queue.put(("shutdown", {}, concurrent.futures.Future(), None))
                self._queue.put(_STOP)
        if cancelled:
            logger.info("engine shutdown: cancelled %d queued command(s)", cancelled)
        if self._thread is None:
            self.state = EngineState.STOPPED
            return True
        self._thread.join(grace_seconds)
        if self._thread.is_alive():
            logger.warning(
                "engine shutdown: command %r still running after %.0fs; abandoning it", self.running, grace_seconds
            )
            return False
        self.state = EngineState.STOPPED
        return True

    def _drain_queue(self) -> int:
        cancelled = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return cancelled
            if item is not _STOP and item[2].cancel():
                cancelled += 1

    # ------------------------------------------------------------------ submitting

    def _submit(
        self, name: str, kwargs: dict[str, Any], on_start: Callable[[], None] | None = None
    ) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.state in (EngineState.STOPPING, EngineState.STOPPED):
                raise EngineStoppedError()
            self._queue.put((name, kwargs, fut, on_start))
        return fut

    async def call(self, name: str, on_start: Callable[[], None] | None = None, /, **kwargs: Any) -> Any:
        """Run command ``name`` on the worker and await its result. ``on_start`` runs on the
        event loop when the worker picks the command up. Cancelling the await cancels the
        command if it has not started yet."""
        self.check_ready()
        hook = None
        if on_start is not None:
            loop = asyncio.get_running_loop()

            def hook() -> None:
                loop.call_soon_threadsafe(on_start)

        return await asyncio.wrap_future(self._submit(name, kwargs, hook))

    # The registry's ModelLoader protocol.

    async def estimate_bytes(
        self, iteration_dir: str, dtype: str | None, on_start: Callable[[], None] | None = None
    ) -> int:
        return await self.call("estimate_bytes", on_start, path=iteration_dir, dtype=dtype)

    async def load(self, model_id: str, spec: Any, on_start: Callable[[], None] | None = None) -> LoadedModel:
        return await self.call(
            "load",
            on_start,
            model_id=model_id,
            path=spec.iteration_dir,
            model_type=spec.model_type,
            dtype=spec.dtype,
            mp_overrides=dict(spec.mp_overrides) or None,
        )

    async def release(self, model_id: str) -> None:
        await self.call("release", None, model_id=model_id)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        _yield_to_the_event_loop()
        while True:
            try:
                item = self._queue.get(timeout=self.heartbeat_seconds if self._multi_rank_ready() else None)
            except queue.Empty:
                self._heartbeat()
                continue
            if item is _STOP:
                return
            name, kwargs, fut, on_start = item
            if not fut.set_running_or_notify_cancel():
                continue
            self.running = name
            try:
                if on_start is not None:
                    on_start()
                if self.world_size > 1 and name not in ("startup", "shutdown"):
                    if self.state is EngineState.FAILED:
                        raise NotReadyError(f"the engine failed: {self.error}", retry_after=None)
                    self._collective(self._broadcast, (name, kwargs))
                result = self._run(name, kwargs)
            except Exception as e:
                fut.set_exception(e)
            except BaseException as e:  # torch DCP's CheckpointException derives from BaseException
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    fut.set_exception(e)
                    raise
                wrapped = RuntimeError(f"{type(e).__name__}: {e}")
                wrapped.__cause__ = e
                fut.set_exception(wrapped)
            else:
                fut.set_result(result)
            finally:
                self.running = None

    def _run(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Command ``name``, its file reads confined to the roots (see ``__init__``)."""
        from megaload.checkpoint import confined_to

        with confined_to(self._save_read_roots if name == "save" else self._read_roots):
            return getattr(self, f"_op_{name}")(**kwargs)

    def _multi_rank_ready(self) -> bool:
        return self.world_size > 1 and self.state is EngineState.READY

    def _heartbeat(self) -> None:
        self.running = "heartbeat"
        try:
            self._collective(self._broadcast, ("heartbeat", {}))
            self._collective(self._op_heartbeat)
        except Exception:
            pass  # _collective has failed the engine
        finally:
            self.running = None

    def _collective(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` (a collective); when it fails (a rank died, hung past the collective
        timeout, or the group broke) the engine fails: /readyz answers 503 and the process
        exits with status 1 within a second, for the orchestrator to restart the job."""
        try:
            return fn(*args)
        except Exception as e:
            self._fail(e)
            raise

    def _fail(self, error: BaseException) -> None:
        if self.state is EngineState.FAILED:
            return
        self.error = error
        self.state = EngineState.FAILED
        logger.critical(
            "rank %d: a collective failed (%s: %s); the distributed context is broken, exiting",
            self.rank,
            type(error).__name__,
            error,
        )
        timer = threading.Timer(1.0, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    def _broadcast(self, command: tuple[str, dict[str, Any]] | None) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([command], src=0)

    def follow(self) -> None:
        """The loop of ranks other than 0 under torchrun: run what rank 0 broadcasts until it
        broadcasts ``shutdown``. Errors are logged; rank 0 reports them."""
        import torch.distributed as dist

        self._op_startup()
        while True:
            box: list[Any] = [None]
            try:
                dist.broadcast_object_list(box, src=0)
            except Exception as e:  # rank 0 died or hung past the collective timeout
                logger.critical("rank %d: no command from rank 0 (%s: %s); exiting", self.rank, type(e).__name__, e)
                raise SystemExit(1) from None
            name, kwargs = box[0]
            try:
                self._run(name, kwargs)
            except Exception:
                logger.exception("rank %d: command %s failed", self.rank, name)
            if name == "shutdown":
                return

    # ------------------------------------------------------------------ commands

    def _op_startup(self) -> None:
        from megaload.checkpoint import initialize_distributed, initialize_model_parallel

        try:
            if self.device == "cuda":
                import torch

                torch.cuda.set_device(self.local_rank)
            import datetime

            from megatron.core import parallel_state

            initialize_distributed(
                self.backend,
                world_size=self.world_size,
                rank=self.rank,
                timeout=datetime.timedelta(seconds=self.collective_timeout_seconds),
            )
            self._owns_context = True
            initialize_model_parallel(self.tensor_model_parallel_size, self.pipeline_model_parallel_size)
            self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
            self.pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        except BaseException as e:
            self.error = e
            self.state = EngineState.FAILED
            logger.error("engine start-up failed: %s", e)
            raise
        _settle_heap()
        self.state = EngineState.READY
        self._ready.set()
        logger.info(
            "distributed context up: backend=%s device=%s world_size=%d rank=%d",
            self.backend,
            self.device,
            self.world_size,
            self.rank,
        )

    def _op_shutdown(self) -> None:
        from megaload.checkpoint import is_distributed_initialized, shutdown_distributed

        if not self._owns_context:
            return
        if self.world_size > 1 and self.rank == 0 and is_distributed_initialized():
            if self.state is EngineState.FAILED:
                logger.warning("not telling the other ranks to shut down: the distributed context is broken")
                return
            try:
                self._broadcast(("shutdown", {}))
            except Exception as e:
                logger.warning("could not tell the other ranks to shut down: %s", e)
        self._models.clear()
        self._tokenizers.clear()
        gc.collect()
        if is_distributed_initialized():
            shutdown_distributed()
        self._owns_context = False
        logger.info("distributed context torn down")

    def _op_model_config(self, path: str) -> dict[str, Any]:
        from megaload.checkpoint import load_model_config

        config, mlm_args = load_model_config(path)
        return {
            "config_type": type(config).__name__,
            "model_type": _model_type_of(config),
            "config": {k: to_jsonable(v) for k, v in object_fields(config).items()},
            "mlm_args": None if mlm_args is None else {k: to_jsonable(v) for k, v in object_fields(mlm_args).items()},
        }

    def _op_hf_view(self, path: str, dtype: str | None) -> tuple[Any, dict[str, str]] | None:
        """The Hugging Face view of the checkpoint at ``path`` (as loaded with ``dtype``) and
        the tokenizer files it ships (name -> path). Rank 0 only: the others have nothing
        to serve."""
        if self.rank != 0:
            return None
        from megaload.checkpoint import TokenizerError, load_model_config, tokenizer_files
        from megaload.hf import hf_view

        config, mlm_args = load_model_config(path)
        if dtype is not None:
            config = _with_params_dtype(config, dtype)
        try:
            tokenizer = self._tokenizer(path)
        except TokenizerError as e:
            logger.info("no tokenizer for the Hugging Face view of %s: %s", path, e)
            tokenizer = None
        view = hf_view(config, megatron_args=mlm_args, tokenizer=tokenizer)
        try:
            files = {name: str(p) for name, p in tokenizer_files(path).items()}
        except TokenizerError:
            files = {}
        return view, files

    def _op_tensor_metadata(self, path: str) -> list[dict[str, Any]]:
        from megaload.checkpoint import read_tensor_metadata

        out = []
        for name, meta in sorted(read_tensor_metadata(path).items()):
            numel = 1
            for dim in meta.shape:
                numel *= int(dim)
            out.append(
                {
                    "name": name,
                    "shape": [int(d) for d in meta.shape],
                    "dtype": str(meta.dtype).removeprefix("torch."),
                    "size_bytes": numel * meta.dtype.itemsize,
                }
            )
        return out

    def _op_estimate_bytes(self, path: str, dtype: str | None) -> int:
        from megaload.checkpoint import estimate_model_bytes, parse_dtype

        return int(estimate_model_bytes(path, dtype=None if dtype is None else parse_dtype(dtype)))

    def _op_load(
        self,
        model_id: str,
        path: str,
        model_type: str | None,
        dtype: str | None,
        mp_overrides: dict[str, Any] | None,
    ) -> LoadedModel:
        started = time.monotonic()
        model: list[Any] = []
        state_dict: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            model, state_dict = self._load_local(path, model_type, dtype, mp_overrides)
        except BaseException as e:  # CheckpointException derives from BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            error = e
        directory = None
        if self.world_size > 1:
            directory = self._agree_on_load(path, model, state_dict, error)
        if error is not None:
            if self.metrics is not None:
                self.metrics.checkpoint_loads.labels(outcome="failure").inc()
            raise error
        seconds = time.monotonic() - started
        local_bytes = _unique_nbytes(state_dict.values())
        view: Any = state_dict
        sends: dict[str, str] = {}
        if directory is not None:
            from .model_parallel import GatheredTensors, sent_by

            view = GatheredTensors(directory, lambda name: self._gather_blocking(model_id, name))
            sends = sent_by(directory).get(self.rank, {})
        specs = view.specs if directory is not None else state_dict
        loaded = LoadedModel(
            model_id=model_id,
            state_dict=view,
            parameter_count=sum(_numel(t.shape) for t in specs.values()),
            size_bytes=local_bytes,
            dtype=_dtype_of(specs.values()),
            model_type=model_type or _model_type_of(getattr(model[0], "config", None)),
            config_type=type(getattr(model[0], "config", None)).__name__,
            load_seconds=seconds,
            model=model,
            local_state_dict=state_dict,
            directory=directory,
            sends=sends,
        )
        self._models[model_id] = loaded
        if self.metrics is not None:
            self.metrics.checkpoint_loads.labels(outcome="success").inc()
            self.metrics.load_seconds.observe(seconds)
            self.metrics.checkpoint_bytes_read.inc(_dir_bytes(Path(path)))
        logger.info("loaded %s as %s in %.2fs (%d bytes on this rank)", path, model_id, seconds, local_bytes)
        return loaded

    def _load_local(
        self, path: str, model_type: str | None, dtype: str | None, mp_overrides: dict[str, Any] | None
    ) -> tuple[list[Any], dict[str, Any]]:
        from megaload.checkpoint import load_megatron_model, model_state_dict, parse_dtype

        self._check_overrides(mp_overrides)
        target = None if dtype is None else parse_dtype(dtype)
        overrides = dict(mp_overrides or {})
        overrides["tensor_model_parallel_size"] = self.tensor_model_parallel_size
        overrides["pipeline_model_parallel_size"] = self.pipeline_model_parallel_size
        model = load_megatron_model(
            path,
            model_type=model_type,
            use_cpu_init=self.device == "cpu",
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

    def _agree_on_load(self, path: str, model: list[Any], state_dict: dict[str, Any], error: BaseException | None):
        """Every rank learns every rank's outcome; a failure anywhere fails the load on all
        ranks (the new model is dropped, resident ones stay). Rank 0 returns the directory of
        the model's parts."""
        from megaload.checkpoint import padded_vocab_rows

        from .model_parallel import Directory, agree, describe_local, first_failure

        parts = []
        if error is None:
            try:
                parts = describe_local(model, state_dict)
            except Exception as e:
                error = e
        outcomes = self._collective(agree, self.rank, self.tp_rank, self.pp_rank, error, parts)
        failure = first_failure(outcomes, path)
        if failure is not None:
            model.clear()
            state_dict.clear()
            raise error if error is not None else failure
        return Directory.build(outcomes, padded_vocab_rows(model, 1) if model else None)

    def _gather_blocking(self, model_id: str, name: str) -> Any:
        """From a stream's thread: the full tensor ``name``, gathered by all ranks."""
        return self._submit("gather_tensor", {"model_id": model_id, "name": name}).result()

    def _op_gather_tensor(self, model_id: str, name: str) -> Any:
        from .errors import ModelNotFoundError
        from .model_parallel import receive_full, send_part

        loaded = self._models.get(model_id)
        if loaded is None or loaded.directory is None:
            raise ModelNotFoundError(model_id)
        if self.rank == 0:
            return self._collective(receive_full, loaded.directory, loaded.local_state_dict, name)
        self._collective(send_part, self.rank, loaded.local_state_dict, loaded.sends, name)
        return None

    def _op_heartbeat(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def _op_release(self, model_id: str) -> None:
        loaded = self._models.pop(model_id, None)
        if loaded is None:
            return
        # Megatron modules hold no reference cycles: dropping the last references frees the
        # tensors at once. No gc.collect() here: a full collection holds the GIL for hundreds
        # of milliseconds and would stall the event loop.
        loaded.state_dict.clear()
        loaded.local_state_dict.clear()
        loaded.model.clear()
        del loaded
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _op_save(
        self, model_id: str, path: str, ckpt_format: str, hf_tokenizer_path: str | None, overwrite: bool
    ) -> str:
        from megaload.checkpoint import save_megatron_model

        loaded = self._models.get(model_id)
        if loaded is None:
            from .errors import ModelNotFoundError

            raise ModelNotFoundError(model_id)
        save_megatron_model(
            loaded.model, path, ckpt_format=ckpt_format, hf_tokenizer_path=hf_tokenizer_path, overwrite=overwrite
        )
        return path

    def _op_tokenizer_info(self, path: str) -> dict[str, Any]:
        tok = self._tokenizer(path)
        special = {name: int(value) for name, value in tok.special_ids.items()}
        info: dict[str, Any] = {
            "tokenizer_type": tok.tokenizer_type,
            "vocab_size": int(tok.vocab_size),
            "special_ids": special,
        }
        for name in ("eod", "bos", "eos", "pad"):
            info[name] = special.get(name)
        return info

    def _op_tokenize(self, path: str, text: str, detokenize: bool) -> dict[str, Any]:
        from megaload.checkpoint import TokenizerError

        tok = self._tokenizer(path)
        try:
            ids = [int(i) for i in tok.tokenize(text)]
            back = tok.detokenize(ids) if detokenize else None
        except Exception as e:  # tokenizers raise anything (NullTokenizer: ValueError on words)
            raise TokenizerError(f"{tok.tokenizer_type} cannot tokenize this text: {e}", path=path) from e
        return {"ids": ids, "count": len(ids), "detokenized": None if back is None else str(back)}

    # ------------------------------------------------------------------ helpers (worker thread)

    def _tokenizer(self, path: str) -> Any:
        from megaload.checkpoint import load_tokenizer

        key = (path, _mtime_ns(Path(path)))
        tok = self._tokenizers.get(key)
        if tok is None:
            tok = load_tokenizer(path)
            self._tokenizers[key] = tok
            while len(self._tokenizers) > _MAX_TOKENIZERS:
                self._tokenizers.popitem(last=False)
        else:
            self._tokenizers.move_to_end(key)
        return tok

    def _check_overrides(self, mp_overrides: dict[str, Any] | None) -> None:
        from megaload.checkpoint import IncompatibleConfigError

        if not mp_overrides:
            return
        have = {
            "tensor_model_parallel_size": self.tensor_model_parallel_size,
            "pipeline_model_parallel_size": self.pipeline_model_parallel_size,
        }
        for name in _PARALLEL_FIELDS:
            value = mp_overrides.get(name)
            if value is not None and value != have.get(name, 1):
                raise IncompatibleConfigError(
                    f"mp_overrides.{name}={value} does not match this service's parallel layout "
                    f"({name}={have.get(name, 1)}, world size {self.world_size})",
                    field=f"mp_overrides.{name}",
                )
        if mp_overrides.get("sequence_parallel") and self.tensor_model_parallel_size == 1:
            raise IncompatibleConfigError(
                "mp_overrides.sequence_parallel needs tensor_model_parallel_size > 1",
                field="mp_overrides.sequence_parallel",
            )


def _yield_to_the_event_loop() -> None:
    """Make the worker thread the one that waits when the process is busy.

    Heavy commands keep a core and (between C calls) the GIL busy for seconds; the event loop
    must still answer ``/healthz`` within milliseconds. Two knobs: a lower scheduling priority
    for this thread (Linux schedules threads individually, so ``setpriority`` on the thread id
    affects only it), and a shorter GIL switch interval (1 ms instead of 5 ms), so a loop thread
    waiting for the GIL gets it back sooner. What remains are C calls that hold the GIL: torch's
    ``torch.load`` of each large tensor record in the DCP reader holds it for 20-200 ms.
    """
    sys.setswitchinterval(0.001)
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError, PermissionError):  # not Linux, or not allowed: keep going
        logger.debug("could not lower the engine thread's priority")


def _settle_heap() -> None:
    """Import what loads need, then move every object alive now (torch, megatron, their
    modules) out of the garbage collector's view (:func:`gc.freeze`): later collections, which
    hold the GIL, only walk objects created since, so they no longer stall the event loop."""
    import megatron.core.dist_checkpointing  # noqa: F401
    import megatron.core.models.gpt  # noqa: F401

    gc.collect()
    gc.freeze()


def _with_params_dtype(config: Any, dtype: str) -> Any:
    """A copy of ``config`` saying its weights are ``dtype`` (a load that cast them)."""
    import copy

    import torch

    target = getattr(torch, dtype)
    out = copy.copy(config)
    out.params_dtype = target
    out.bf16 = target is torch.bfloat16
    out.fp16 = target is torch.float16
    return out


def _model_type_of(config: Any) -> str | None:
    name = type(config).__name__.lower() if config is not None else ""
    if "mamba" in name:
        return "mamba"
    if "gpt" in name or "transformerconfig" in name:
        return "gpt"
    return None


def _unique_nbytes(tensors: Any) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _dtype_of(tensors: Any) -> str:
    found = {str(t.dtype).removeprefix("torch.") for t in tensors if t.dtype.is_floating_point}
    if len(found) == 1:
        return found.pop()
    return "mixed" if found else "none"


def _dir_bytes(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return total
    return total


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
