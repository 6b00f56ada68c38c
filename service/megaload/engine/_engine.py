"""The engine: a worker thread running typed commands, and the state of its rank."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..devices import resolve_backend, resolve_device
from ..errors import EngineStoppedError, NotReadyError
from . import commands as c
from ._handlers import handle
from ._model import LoadedModel, Tokenizers
from ._process import set_huge_page_policy, shorten_gil_switch_interval
from ._ranks import RankProtocol, exit_soon, heartbeat_interval
from ._worker import Worker

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..settings import Settings

__all__ = ["Engine", "EngineState"]

logger = logging.getLogger(__name__)


# The settings that are the engine's parameters, by the same names.
_ENGINE_SETTINGS = (
    "device",
    "backend",
    "world_size",
    "rank",
    "local_rank",
    "tensor_parallel",
    "pipeline_parallel",
    "collective_timeout_seconds",
    "checkpoint_roots",
    "save_roots",
    "huge_pages",
)


class EngineState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Engine:
    """Runs library calls on one thread, in order; see :mod:`megaload.engine`.

    ``on_fatal`` is what happens once a collective failed and the distributed context is
    broken (after the engine turned FAILED): by default the process exits with status 1
    a second later (:func:`~megaload.engine._ranks.exit_soon`)."""

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
        huge_pages: str = "auto",
        on_fatal: Callable[[], None] = exit_soon,
    ) -> None:
        self.huge_pages = huge_pages
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
        self.heartbeat_seconds = heartbeat_interval(collective_timeout_seconds)
        self.tp_rank = 0
        self.pp_rank = 0
        self.metrics = metrics
        self.state = EngineState.STARTING
        self.error: BaseException | None = None
        self.models: dict[str, LoadedModel] = {}
        self.tokenizers = Tokenizers()
        self.owns_context = False  # only a context this engine built is torn down by it
        self.ranks = RankProtocol(rank, on_fatal=self._fail)
        self._on_fatal = on_fatal
        self._ready = threading.Event()
        self._worker = Worker(self._run, idle=self._heartbeat, idle_seconds=self._idle_seconds)

    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: Metrics | None = None) -> Engine:
        """The engine of this rank as the service's settings describe it."""
        return cls(**{name: getattr(settings, name) for name in _ENGINE_SETTINGS}, metrics=metrics)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> concurrent.futures.Future:
        """Start the worker thread; its first command initializes the distributed context.
        The process-wide GIL switch interval and the loads' huge-page policy are set here, once
        (see ``_process``)."""
        shorten_gil_switch_interval()
        set_huge_page_policy(self.huge_pages)
        return self._worker.start(c.Startup())

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

    @property
    def failed(self) -> bool:
        return self.state is EngineState.FAILED

    def mark_ready(self) -> None:
        """The start-up command built the context."""
        self.state = EngineState.READY
        self._ready.set()
        logger.info(
            "distributed context up: backend=%s device=%s world_size=%d rank=%d",
            self.backend,
            self.device,
            self.world_size,
            self.rank,
        )

    def mark_failed_start(self, error: BaseException) -> None:
        self.error = error
        self.state = EngineState.FAILED
        logger.error("engine start-up failed: %s", error)

    def shutdown(self, grace_seconds: float = 30.0) -> bool:
        """Blocking. Cancel queued commands, let the running one finish within ``grace_seconds``,
        then tear the distributed context down. Returns False if a command had to be abandoned
        (the worker is a daemon thread; the library's saves are atomic, so nothing half-written
        is left at a destination)."""
        if self.state in (EngineState.STOPPING, EngineState.STOPPED):
            return True
        self.state = EngineState.STOPPING
        clean = self._worker.close(c.Shutdown(), grace_seconds)
        if clean:
            self.state = EngineState.STOPPED
        return clean

    def follow(self) -> None:
        """The loop of ranks other than 0 under torchrun: run what rank 0 broadcasts until it
        broadcasts ``Shutdown``. Errors are logged; rank 0 reports them."""
        self._run(c.Startup())
        self.ranks.follow(self._run)

    # ------------------------------------------------------------------ running commands

    async def run(
        self,
        command: c.Command,
        on_start: Callable[[], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Any:
        """Run ``command`` on the worker and await its result. ``on_start`` runs on the
        event loop when the worker picks the command up; ``on_progress(done, total)`` there
        as the command's checkpoint reads land (bytes; loads report it). Cancelling the await
        cancels the command if it has not started yet."""
        self.check_ready()
        loop = asyncio.get_running_loop()
        hook = around = None
        if on_start is not None:

            def hook() -> None:
                loop.call_soon_threadsafe(on_start)

        if on_progress is not None:
            from megaload.checkpoint import reporting_read_progress

            def report(done: int, total: int) -> None:
                loop.call_soon_threadsafe(on_progress, done, total)

            around = functools.partial(reporting_read_progress, report)
        return await asyncio.wrap_future(self._worker.submit(command, hook, around))

    def gather_blocking(self, model_id: str, name: str) -> Any:
        """From a stream's thread: the full tensor ``name``, gathered by all ranks."""
        return self._worker.submit(c.GatherTensor(model_id=model_id, tensor=name)).result()

    @property
    def queue_depth(self) -> int:
        return self._worker.queue_depth

    @property
    def running(self) -> str | None:
        """The name of the command being run, for logs."""
        command = self._worker.running
        return None if command is None else command.name

    # The registry's ModelLoader protocol.

    async def estimate_bytes(
        self, iteration_dir: str, dtype: str | None, on_start: Callable[[], None] | None = None
    ) -> int:
        return await self.run(c.EstimateBytes(path=iteration_dir, dtype=dtype), on_start)

    async def load(
        self,
        model_id: str,
        spec: Any,
        on_start: Callable[[], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> LoadedModel:
        command = c.Load(
            model_id=model_id,
            path=spec.iteration_dir,
            model_type=spec.model_type,
            dtype=spec.dtype,
            mp_overrides=dict(spec.mp_overrides) or None,
        )
        return await self.run(command, on_start, on_progress)

    async def release(self, model_id: str) -> None:
        await self.run(c.Release(model_id=model_id))

    # ------------------------------------------------------------------ worker thread

    def _run(self, command: c.Command) -> Any:
        """``command`` on this rank (after rank 0 sent it to the others), its file reads
        confined to the roots (see ``__init__``)."""
        from megaload.checkpoint import confined_to

        if self.world_size > 1 and self.rank == 0 and command.broadcast:
            if self.failed:
                raise NotReadyError(f"the engine failed: {self.error}", retry_after=None)
            self.ranks.broadcast(command)
        with confined_to(self._save_read_roots if isinstance(command, c.Save) else self._read_roots):
            return handle(command, self)

    def _idle_seconds(self) -> float | None:
        return self.heartbeat_seconds if self.world_size > 1 and self.state is EngineState.READY else None

    def _heartbeat(self) -> None:
        try:
            self.ranks.broadcast(c.Heartbeat())
            self.ranks.collective(handle, c.Heartbeat(), self)
        except Exception:
            pass  # the collective has failed the engine

    def _fail(self, error: BaseException) -> None:
        """A collective failed: /readyz answers 503, then ``on_fatal`` (by default the
        process exits with status 1 within a second, for the orchestrator to restart it)."""
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
        self._on_fatal()
