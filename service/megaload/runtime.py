"""The runtime: engine + registry + jobs + path policy + metrics, built once per app.

Route handlers stay thin by calling the methods here; each takes and returns wire models (or
registry entries) and raises only typed errors. Life cycle (driven by the app's lifespan)::

    runtime = Runtime(settings, to_problem=problem_for)
                                     # resolves device, backend and budget; no thread yet
    await runtime.start()            # leftovers of saves killed before they finished removed
                                     # from the save roots; engine thread up; /readyz turns 200
    ...                              # once the context is built (start() does not wait for that)
    await runtime.stop()             # cancel queued jobs, let a running save finish within the
                                     # grace period, tear the context down
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import anyio

from megaload_client.types import (
    CheckpointConfig,
    CheckpointTensors,
    Info,
    JobKind,
    JobResult,
    LoadModelRequest,
    MemoryInfo,
    ModelInfo,
    ProblemDetail,
    SaveModelRequest,
    TensorInfo,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    VersionInfo,
)

from . import __version__
from .checkpoint import (
    CheckpointExistsError,
    CheckpointLayout,
    CheckpointNotFoundError,
    confined_to,
    inspect_layout,
    parse_dtype,
    remove_stale_saves,
)
from .devices import device_memory_bytes
from .engine import Engine, EngineState, commands
from .errors import BadRequestError
from .hf_models import HFModels
from .jobs import JobHandle, JobManager, JobRecord
from .metrics import Metrics
from .paths import PathPolicy
from .registry import LoadSpec, ModelEntry, Registry
from .settings import Settings

__all__ = ["Runtime", "DEFAULT_BUDGET_FRACTION"]

logger = logging.getLogger(__name__)

# Share of the device's memory resident models may use when no budget is configured: loading
# needs head-room beyond the resident bytes (the checkpoint reader's buffers, the allocator).
DEFAULT_BUDGET_FRACTION = {"cpu": 0.5, "cuda": 0.8}


class Runtime:
    def __init__(self, settings: Settings, *, to_problem: Callable[[BaseException], ProblemDetail]) -> None:
        """``to_problem`` is the HTTP layer's error mapping, used for failed jobs' ``error``."""
        self.settings = settings
        self.metrics = Metrics()
        self.paths = PathPolicy(settings.checkpoint_roots, settings.save_roots)
        self.engine = Engine(
            device=settings.device,
            backend=settings.backend,
            world_size=settings.world_size,
            rank=settings.rank,
            local_rank=settings.local_rank,
            tensor_parallel=settings.tensor_parallel,
            pipeline_parallel=settings.pipeline_parallel,
            collective_timeout_seconds=settings.collective_timeout_seconds,
            metrics=self.metrics,
            checkpoint_roots=self.paths.checkpoint_roots,
            save_roots=self.paths.save_roots,
        )
        total = device_memory_bytes(self.engine.device, settings.local_rank)
        if settings.memory_budget is not None:
            budget = settings.memory_budget.resolve(total)
        else:
            budget = int(total * DEFAULT_BUDGET_FRACTION[self.engine.device])
        if budget <= 0:
            raise ValueError(f"memory budget resolves to {budget} bytes on this {self.engine.device} device")
        self.registry = Registry(
            self.engine, budget, metrics=self.metrics, memory_wait_seconds=settings.memory_wait_seconds
        )
        self.hf_models = HFModels(self.engine, self.registry, self.paths)
        self.jobs = JobManager(to_problem, metrics=self.metrics, max_finished=settings.max_finished_jobs)
        self.started_at = time.time()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        for root in self.paths.save_roots:
            # what saves killed before they finished left behind (ours only: see _staging)
            removed = await anyio.to_thread.run_sync(functools.partial(remove_stale_saves, root, recursive=True))
            if removed:
                logger.info("removed %d leftover(s) of unfinished saves under %s", len(removed), root)
        self.engine.start()

    async def stop(self) -> None:
        self.jobs.cancel_queued("the service shut down before the job started")
        grace = self.settings.shutdown_grace_seconds
        clean = await anyio.to_thread.run_sync(self.engine.shutdown, grace, abandon_on_cancel=True)
        await self.jobs.abandon_running(
            "the service shut down while the job ran; a save in progress was abandoned before publishing, "
            "so its destination was left as it was"
        )
        await self.registry.close()
        if not clean:
            logger.warning("shutdown abandoned a running engine command after %.0fs", grace)

    @property
    def ready(self) -> bool:
        return self.engine.state is EngineState.READY

    # ------------------------------------------------------------------ paths

    async def resolve_checkpoint(self, raw: str, *, field: str = "path") -> CheckpointLayout:
        """Police ``raw`` against the checkpoint roots, then find its iteration directory."""
        path = self.paths.resolve_checkpoint(raw, field=field)
        layout = await anyio.to_thread.run_sync(self._inspect_layout, path)
        real = self.paths.ensure_inside_checkpoint_roots(layout.iteration_dir, field=field)
        if real != layout.iteration_dir:
            layout = CheckpointLayout(
                iteration_dir=real,
                format=layout.format,
                iteration=layout.iteration,
                sharded_backend=layout.sharded_backend,
            )
        return layout

    def _inspect_layout(self, path: Path) -> CheckpointLayout:
        """:func:`inspect_layout` (worker thread), its reads (tracker, metadata.json) confined
        to the checkpoint roots."""
        with confined_to(self.paths.checkpoint_roots):
            return inspect_layout(path)

    # ------------------------------------------------------------------ checkpoints

    async def checkpoint_config(self, raw: str) -> CheckpointConfig:
        layout = await self.resolve_checkpoint(raw)
        data = await self.engine.run(commands.ModelConfig(path=str(layout.iteration_dir)))
        return CheckpointConfig(
            path=raw,
            iteration_dir=str(layout.iteration_dir),
            iteration=layout.iteration,
            format=layout.format.value,
            **data,
        )

    async def checkpoint_tensors(self, raw: str) -> CheckpointTensors:
        layout = await self.resolve_checkpoint(raw)
        tensors = [TensorInfo(**t) for t in await self.engine.run(commands.TensorMetadata(path=str(layout.iteration_dir)))]
        return CheckpointTensors(
            path=raw,
            iteration_dir=str(layout.iteration_dir),
            tensors=tensors,
            tensor_count=len(tensors),
            total_bytes=sum(t.size_bytes for t in tensors),
        )

    async def tokenizer_info(self, raw: str) -> TokenizerInfo:
        layout = await self.resolve_checkpoint(raw)
        data = await self.engine.run(commands.TokenizerInfo(path=str(layout.iteration_dir)))
        return TokenizerInfo(path=raw, iteration_dir=str(layout.iteration_dir), **data)

    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        layout = await self.resolve_checkpoint(req.path)
        data = await self.engine.run(
            commands.Tokenize(path=str(layout.iteration_dir), text=req.text, detokenize=req.detokenize)
        )
        return TokenizeResponse(**data)

    # ------------------------------------------------------------------ models

    async def load_spec(self, req: LoadModelRequest) -> LoadSpec:
        layout = await self.resolve_checkpoint(req.checkpoint_path, field="checkpoint_path")
        dtype = None if req.dtype is None else str(parse_dtype(req.dtype)).removeprefix("torch.")
        overrides = req.mp_overrides.model_dump(exclude_none=True) if req.mp_overrides is not None else {}
        return LoadSpec(
            checkpoint_path=req.checkpoint_path,
            iteration_dir=str(layout.iteration_dir),
            iteration=layout.iteration,
            format=layout.format.value,
            fingerprint=await anyio.to_thread.run_sync(_fingerprint, layout.iteration_dir),
            model_type=req.model_type,
            dtype=dtype,
            mp_overrides=tuple(sorted(overrides.items())),
        )

    async def load_model(self, req: LoadModelRequest) -> tuple[ModelEntry, bool]:
        """Load and wait: ``(entry, created)``."""
        self.engine.check_ready()
        spec = await self.load_spec(req)
        return await self.registry.load(spec, pin=req.pin)

    async def submit_load(self, req: LoadModelRequest) -> JobRecord:
        """Load in the background (``wait=false``): the job, queued."""
        self.engine.check_ready()
        spec = await self.load_spec(req)

        async def run(handle: JobHandle) -> JobResult:
            entry, created = await self.registry.load(
                spec, pin=req.pin, on_start=handle.started, on_phase=handle.progress
            )
            return JobResult(model=self.model_info(entry), model_id=entry.id, created=created)

        return self.jobs.submit(JobKind.LOAD, run, target=spec.iteration_dir, model_id=spec.model_id)

    def model_info(self, entry: ModelEntry) -> ModelInfo:
        spec, loaded = entry.spec, entry.loaded
        return ModelInfo(
            id=entry.id,
            checkpoint_path=spec.checkpoint_path,
            iteration_dir=spec.iteration_dir,
            iteration=spec.iteration,
            format=spec.format,
            model_type=getattr(loaded, "model_type", None) or spec.model_type,
            dtype=getattr(loaded, "dtype", None) or spec.dtype or "unknown",
            parameter_count=int(getattr(loaded, "parameter_count", 0)),
            size_bytes=entry.size_bytes,
            pinned=entry.pinned,
            mp_overrides=dict(spec.mp_overrides) or None,
            loaded_at=entry.loaded_at,
            last_used_at=entry.last_used_at,
            load_seconds=round(float(getattr(loaded, "load_seconds", 0.0)), 6),
            active_leases=entry.leases,
        )

    async def submit_save(self, model_id: str, req: SaveModelRequest) -> JobRecord:
        self.engine.check_ready()
        self.registry.get(model_id)
        dest = self.paths.resolve_save(req.path, field="path")
        tokenizer = None
        if req.hf_tokenizer_path is not None:
            tokenizer = self.paths.resolve_checkpoint(req.hf_tokenizer_path, field="hf_tokenizer_path")
            if not await anyio.to_thread.run_sync(tokenizer.exists):
                raise CheckpointNotFoundError(f"hf_tokenizer_path: no such path: {tokenizer}", path=tokenizer)
        await anyio.to_thread.run_sync(_check_save_destination, dest, req.overwrite)
        lease = self.registry.acquire(model_id)  # eviction waits for the save

        async def run(handle: JobHandle) -> JobResult:
            command = commands.Save(
                model_id=model_id,
                path=str(dest),
                ckpt_format=req.ckpt_format,
                hf_tokenizer_path=None if tokenizer is None else str(tokenizer),
                overwrite=req.overwrite,
            )
            await self.engine.run(command, lambda: handle.started("saving"))
            return JobResult(model_id=model_id, path=str(dest))

        try:
            record = self.jobs.submit(JobKind.SAVE, run, target=str(dest), model_id=model_id)
        except BaseException:
            lease.release()
            raise
        # released however the job ends, also when it is cancelled before its runner starts
        record.task.add_done_callback(lambda _task: lease.release())
        return record

    # ------------------------------------------------------------------ info

    def memory_info(self) -> MemoryInfo:
        m = self.registry.memory()
        return MemoryInfo(
            budget_bytes=m.budget_bytes,
            used_bytes=m.used_bytes,
            reserved_bytes=m.reserved_bytes,
            available_bytes=m.available_bytes,
            evictable_bytes=m.evictable_bytes,
        )

    def info(self) -> Info:
        engine = self.engine
        return Info(
            version=__version__,
            versions=VersionInfo(
                megaload=__version__,
                python=platform.python_version(),
                torch=_dist_version("torch"),
                megatron_core=_dist_version("megatron-core"),
            ),
            backend=engine.backend,
            device=engine.device,
            world_size=engine.world_size,
            rank=engine.rank,
            tensor_model_parallel_size=engine.tensor_model_parallel_size,
            pipeline_model_parallel_size=engine.pipeline_model_parallel_size,
            ready=self.ready,
            memory=self.memory_info(),
            checkpoint_roots=[str(r) for r in self.paths.checkpoint_roots],
            save_roots=[str(r) for r in self.paths.save_roots],
            auth_required=self.settings.token is not None,
            models=len(self.registry.list()),
        )


def _fingerprint(iteration_dir: Path) -> tuple[int, ...]:
    """Identity of the checkpoint's files: a rewritten checkpoint gets a new model id."""
    for name in (".metadata", "model.safetensors", "model.safetensors.index.json"):  # Hugging Face: its weights
        try:
            st = (iteration_dir / name).stat()
        except OSError:
            continue
        return (st.st_ino, st.st_size, st.st_mtime_ns)
    return (0, 0, 0)


def _check_save_destination(dest: Path, overwrite: bool) -> None:
    """Answer 409 up front for what the library would refuse anyway (it re-checks at save)."""
    if not dest.exists() and not dest.is_symlink():
        dest.parent.mkdir(parents=True, exist_ok=True)
        return
    if dest.is_symlink() or not dest.is_dir():
        raise CheckpointExistsError(f"cannot save to {dest}: it exists and is not a directory", path=dest)
    try:
        children = [c.name for c in os.scandir(dest)]
    except OSError as e:
        raise BadRequestError(f"path: cannot read {dest}: {e.strerror}", field="path") from None
    if not children:
        return
    is_checkpoint = "latest_checkpointed_iteration.txt" in children or any(
        c.startswith("iter_") or c == "release" for c in children
    )
    if not is_checkpoint:
        raise CheckpointExistsError(
            f"cannot save to {dest}: the directory holds files that are not a checkpoint; refusing to replace them",
            path=dest,
        )
    if not overwrite:
        raise CheckpointExistsError(
            f"a checkpoint already exists at {dest}; pass overwrite=true to replace it", path=dest
        )


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
