"""The runtime: the one owner of the service's state (engine, registry, jobs, shard plans, Hub
repositories, path policy, metrics), built once per app.

Route handlers stay thin by calling the methods here, and only these: each takes and returns
wire models (or registry entries and job records) and raises only typed errors; a failed
job keeps its exception, which the HTTP layer maps when it answers. Life cycle (driven by the
app's lifespan)::

    runtime = Runtime.create(settings, metrics=metrics)
                                     # resolves device, backend and budget; no thread yet
    await runtime.start()            # leftovers of saves killed before they finished removed
                                     # from the save roots; engine thread up; /readyz turns 200
    ...                              # once the context is built (start() does not wait for that)
    await runtime.stop()             # cancel queued jobs, let a running save finish within the
                                     # grace period, tear the context down
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
    ModelList,
    SaveModelRequest,
    TensorInfo,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
    VersionInfo,
)

from . import __version__
from .checkpoint import (
    CheckpointError,
    CheckpointLayout,
    CheckpointNotFoundError,
    check_save_destination,
    confined_to,
    inspect_layout,
    parse_dtype,
    remove_stale_saves,
    with_stream_keys,
)
from .devices import device_memory_bytes
from .engine import Engine, EngineState, commands
from .errors import BadRequestError, NotReadyError
from .hf_models import HFModels
from .hub_repos import HubRepos
from .jobs import JobHandle, JobManager, JobRecord
from .load_options import effective_load_options
from .metrics import Metrics
from .paths import PathPolicy
from .registry import Lease, LoadSpec, ModelEntry, Registry
from .settings import Settings
from .shard_plans import Reshard, ShardPlans, ShardRead
from .streaming import LazyTensors, ShardOptions

__all__ = ["Runtime", "DEFAULT_BUDGET_FRACTION"]

logger = logging.getLogger(__name__)

# Share of the device's memory resident models may use when no budget is configured: loading
# needs head-room beyond the resident bytes (the checkpoint reader's buffers, the allocator).
DEFAULT_BUDGET_FRACTION = {"cpu": 0.5, "cuda": 0.8}

# What /v1/info says of the engine, by the engine's own names.
_ENGINE_INFO = (
    "backend",
    "device",
    "world_size",
    "rank",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
)


@dataclass(eq=False)
class Runtime:
    """See the module docstring; :meth:`create` builds one from the settings."""

    settings: Settings
    metrics: Metrics
    paths: PathPolicy
    engine: Engine
    registry: Registry
    jobs: JobManager
    hf_models: HFModels
    shard_plans: ShardPlans
    hub_repos: HubRepos
    started_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, settings: Settings, *, metrics: Metrics | None = None) -> Runtime:
        """The runtime ``settings`` describe: device, backend and memory budget resolved, no
        thread started yet."""
        metrics = metrics if metrics is not None else Metrics()
        paths = PathPolicy(settings.checkpoint_roots, settings.save_roots)
        engine = Engine.from_settings(settings, metrics=metrics)
        total = device_memory_bytes(engine.device, settings.local_rank)
        if settings.memory_budget is not None:
            budget = settings.memory_budget.resolve(total)
        else:
            budget = int(total * DEFAULT_BUDGET_FRACTION[engine.device])
        if budget <= 0:
            raise ValueError(f"memory budget resolves to {budget} bytes on this {engine.device} device")
        registry = Registry(engine, budget, metrics=metrics, memory_wait_seconds=settings.memory_wait_seconds)
        hf_models = HFModels(engine, registry, paths)
        shard_plans = ShardPlans(registry)
        return cls(
            settings=settings,
            metrics=metrics,
            paths=paths,
            engine=engine,
            registry=registry,
            jobs=JobManager(metrics=metrics, max_finished=settings.max_finished_jobs),
            hf_models=hf_models,
            shard_plans=shard_plans,
            hub_repos=HubRepos(registry, hf_models, shard_plans),
        )

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

    @property
    def engine_gone(self) -> bool:
        """The engine failed or is stopping: it will not turn ready."""
        return self.engine.state in (EngineState.FAILED, EngineState.STOPPING, EngineState.STOPPED)

    def check_readiness(self) -> None:
        """``/readyz``: NotReadyError saying the engine's state (and why it failed) unless ready."""
        if self.ready:
            return
        state = self.engine.state.value
        detail = f"engine {state}"
        if self.engine.error is not None:
            detail += f": {self.engine.error}"
        raise NotReadyError(detail, retry_after=1 if state == "starting" else None)

    def render_metrics(self) -> bytes:
        self.metrics.engine_queue_depth.set(self.engine.queue_depth)
        return self.metrics.render()

    # ------------------------------------------------------------------ paths

    async def resolve_checkpoint(self, raw: str, *, field: str = "path") -> CheckpointLayout:
        """Police ``raw`` against the checkpoint roots, then find its iteration directory."""
        path = self.paths.resolve_checkpoint(raw, field=field)
        layout = await anyio.to_thread.run_sync(self._confined, inspect_layout, path)
        real = self.paths.ensure_inside_checkpoint_roots(layout.iteration_dir, field=field)
        if real != layout.iteration_dir:
            layout = CheckpointLayout(
                iteration_dir=real,
                format=layout.format,
                iteration=layout.iteration,
                sharded_backend=layout.sharded_backend,
            )
        return layout

    def _confined(self, fn, *args):
        """``fn(*args)`` (worker thread: inspect_layout, with_stream_keys), every file it reads
        confined to the checkpoint roots."""
        with confined_to(self.paths.checkpoint_roots):
            return fn(*args)

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
        listed = await self.engine.run(commands.TensorMetadata(path=str(layout.iteration_dir)))
        naming, listed = await anyio.to_thread.run_sync(
            self._confined, with_stream_keys, layout.iteration_dir, listed
        )
        tensors = [TensorInfo(**t) for t in listed]
        return CheckpointTensors(
            path=raw,
            iteration_dir=str(layout.iteration_dir),
            naming=naming,
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
        fingerprint = await anyio.to_thread.run_sync(_fingerprint, layout.iteration_dir)
        model_type, dtype, overrides = await anyio.to_thread.run_sync(functools.partial(
            effective_load_options, layout.iteration_dir, fingerprint, req.model_type, dtype, overrides,
            tensor_model_parallel_size=self.engine.tensor_model_parallel_size,
            pipeline_model_parallel_size=self.engine.pipeline_model_parallel_size,
            checkpoint_roots=self.paths.checkpoint_roots,
        ))  # the id follows the options the load applies: spelt-out defaults change nothing
        return LoadSpec(
            checkpoint_path=req.checkpoint_path,
            iteration_dir=str(layout.iteration_dir),
            iteration=layout.iteration,
            format=layout.format.value,
            fingerprint=fingerprint,
            model_type=model_type,
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

    def list_models(self) -> ModelList:
        return ModelList(models=[self.model_info(e) for e in self.registry.list()], memory=self.memory_info())

    def get_model(self, model_id: str) -> ModelInfo:
        return self.model_info(self.registry.get(model_id))

    async def evict(self, model_id: str) -> None:
        await self.registry.evict(model_id)

    def acquire(self, model_id: str) -> Lease:
        """A read lease on a resident model (release it, or hand it to a streamed body)."""
        return self.registry.acquire(model_id)

    @asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[ModelEntry]:
        async with self.registry.lease(model_id) as entry:
            yield entry

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

    # ------------------------------------------------------------------ state dicts

    async def _hf_tensors(self, entry: ModelEntry, hf: bool, reshard: Reshard | None) -> LazyTensors | None:
        """The model's Hugging Face tensors for ``names=hf`` (``None`` for its own names)."""
        if not hf:
            return None
        if reshard is not None:
            raise BadRequestError("names=hf cannot be combined with tp_rank/tp_size", field="names")
        return (await self.hf_models.get(entry)).tensors

    async def state_dict_index(
        self, model_id: str, options: ShardOptions, reshard: Reshard | None, *, hf: bool
    ) -> bytes:
        """The index of the model's shards under ``options`` (with checksums), as JSON."""
        async with self.registry.lease(model_id) as entry:
            tensors = await self._hf_tensors(entry, hf, reshard)
            return await self.shard_plans.index_json(entry, options, reshard, tensors)

    async def state_dict_shard(
        self, entry: ModelEntry, n: int, options: ShardOptions, reshard: Reshard | None, *, hf: bool
    ) -> ShardRead:
        """Shard ``n`` of the model under ``options``; the caller holds a lease on ``entry``."""
        tensors = await self._hf_tensors(entry, hf, reshard)
        return await self.shard_plans.shard(entry, n, options, reshard, tensors)

    # ------------------------------------------------------------------ jobs

    def list_jobs(self) -> list[JobRecord]:
        return self.jobs.list()

    def get_job(self, job_id: str) -> JobRecord:
        return self.jobs.get(job_id)

    def cancel_job(self, job_id: str) -> JobRecord:
        return self.jobs.cancel(job_id)

    # ------------------------------------------------------------------ info

    def memory_info(self) -> MemoryInfo:
        m = self.registry.memory()
        return MemoryInfo(**dataclasses.asdict(m), available_bytes=m.available_bytes)

    def info(self) -> Info:
        return Info(
            version=__version__,
            versions=VersionInfo(
                megaload=__version__,
                python=platform.python_version(),
                torch=_dist_version("torch"),
                megatron_core=_dist_version("megatron-core"),
            ),
            **{name: getattr(self.engine, name) for name in _ENGINE_INFO},
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
    """Answer 409 up front for what the library would refuse at save time (its own check, run
    again by the save), after making the destination's parents inside the save root."""
    if not dest.exists() and not dest.is_symlink():
        dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        check_save_destination(dest, overwrite)
    except CheckpointError:  # CheckpointExistsError is an OSError too
        raise
    except OSError as e:  # an unreadable directory
        raise BadRequestError(f"path: cannot read {dest}: {e.strerror}", field="path") from None


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
