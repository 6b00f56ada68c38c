"""Jobs: loads with ``wait=false`` and saves, run in the background with a visible state.

A job is an asyncio task running a *runner* coroutine. The runner gets a :class:`JobHandle`
and calls :meth:`JobHandle.started` when the engine begins its work (until then the job is
``queued`` and may be cancelled)::

    queued ──started()──> running ──> succeeded | failed
       └──cancel()/shutdown──> cancelled

A failed (or shut-down) job keeps its exception; :meth:`JobRecord.to_wire` takes the HTTP
layer's mapping, so a failed job reports exactly what the synchronous route would have.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from megaload_client.types import Job, JobKind, JobResult, JobState, ProblemDetail

from .errors import EngineStoppedError, JobNotCancellableError, JobNotFoundError

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["JobManager", "JobRecord", "JobHandle", "Runner"]

logger = logging.getLogger(__name__)

_FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobRecord:
    id: str
    kind: JobKind
    target: str | None
    model_id: str | None
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    phase: str | None = "queued"
    bytes_read: int | None = None
    bytes_to_read: int | None = None
    created_at: datetime = field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: BaseException | None = None
    task: asyncio.Task | None = field(default=None, repr=False)

    def to_wire(self, to_problem: Callable[[BaseException], ProblemDetail]) -> Job:
        """The wire job, its error mapped to a problem by ``to_problem``."""
        fields = {name: getattr(self, name) for name in Job.model_fields if name != "error"}
        return Job(**fields, error=None if self.error is None else to_problem(self.error))


class JobHandle:
    """What a runner uses to report on its job."""

    def __init__(self, manager: JobManager, record: JobRecord) -> None:
        self._manager = manager
        self._record = record

    def started(self, phase: str = "running") -> None:
        """The engine began the job's work: queued -> running (no longer cancellable)."""
        rec = self._record
        if rec.state is JobState.QUEUED:
            rec.state = JobState.RUNNING
            rec.started_at = _now()
            rec.phase = phase
            self._manager._update_gauges()

    def progress(self, fraction: float, phase: str | None = None, read: tuple[int, int] | None = None) -> None:
        """``read``: a load's ``(done, total)`` bytes of its checkpoint read so far."""
        self._record.progress = min(1.0, max(0.0, fraction))
        if phase is not None:
            self._record.phase = phase
        if read is not None:
            self._record.bytes_read, self._record.bytes_to_read = read


Runner = Callable[[JobHandle], Awaitable[JobResult]]


class JobManager:
    """Creates, tracks, cancels and forgets jobs. Use from the event loop only."""

    def __init__(self, *, metrics: Metrics | None = None, max_finished: int = 1000) -> None:
        self._metrics = metrics
        self._max_finished = max_finished
        self._jobs: dict[str, JobRecord] = {}
        self._accepting = True
        self._update_gauges()

    def submit(self, kind: JobKind, runner: Runner, *, target: str | None = None, model_id: str | None = None) -> JobRecord:
        if not self._accepting:
            raise EngineStoppedError("the service is shutting down; no new jobs are accepted")
        record = JobRecord(id=uuid.uuid4().hex, kind=kind, target=target, model_id=model_id)
        self._jobs[record.id] = record
        record.task = asyncio.create_task(self._run(record, runner), name=f"job-{record.id}")
        self._forget_old()
        self._update_gauges()
        logger.info("job %s (%s) queued: %s", record.id, kind.value, target)
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self._jobs.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    def list(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda r: r.created_at)

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.state is not JobState.QUEUED:
            raise JobNotCancellableError(job_id, record.state.value)
        self._finish_cancelled(record, None)
        if record.task is not None:
            record.task.cancel()
        return record

    def cancel_queued(self, reason: str) -> list[JobRecord]:
        """Shutdown: refuse new jobs and cancel every job that has not started."""
        self._accepting = False
        cancelled = []
        for record in list(self._jobs.values()):
            if record.state is JobState.QUEUED:
                self._finish_cancelled(record, reason)
                if record.task is not None:
                    record.task.cancel()
                cancelled.append(record)
        for record in cancelled:
            logger.warning("job %s (%s, %s) cancelled: %s", record.id, record.kind.value, record.target, reason)
        return cancelled

    async def abandon_running(self, reason: str) -> list[JobRecord]:
        """Shutdown, after the engine stopped: give running jobs a moment to record their
        outcome, then mark those still running as failed."""
        running = [r for r in self._jobs.values() if r.state is JobState.RUNNING and r.task is not None]
        if running:
            await asyncio.wait([r.task for r in running], timeout=0.5)  # type: ignore[misc]
        abandoned = []
        for record in running:
            if record.state is JobState.RUNNING:
                record.state = JobState.FAILED
                record.finished_at = _now()
                record.phase = "abandoned"
                record.error = EngineStoppedError(reason)
                if record.task is not None:
                    record.task.cancel()
                abandoned.append(record)
                logger.warning("job %s (%s, %s) abandoned: %s", record.id, record.kind.value, record.target, reason)
        self._update_gauges()
        return abandoned

    # ------------------------------------------------------------------ internals

    async def _run(self, record: JobRecord, runner: Runner) -> None:
        handle = JobHandle(self, record)
        try:
            result = await runner(handle)
        except asyncio.CancelledError:
            if record.state not in _FINISHED:
                self._finish_cancelled(record, None)
            return
        except Exception as e:
            if record.state in _FINISHED:
                return
            record.error = _without_tracebacks(e)
            record.state = JobState.FAILED
            record.phase = "failed"
            record.finished_at = _now()
            if record.started_at is None:
                record.started_at = record.finished_at
            logger.warning("job %s (%s) failed: %s: %s", record.id, record.kind.value, type(e).__name__, e)
        else:
            if record.state in _FINISHED:
                return
            record.result = result
            record.state = JobState.SUCCEEDED
            record.progress = 1.0
            record.phase = "done"
            record.finished_at = _now()
            if record.started_at is None:
                record.started_at = record.finished_at
            logger.info("job %s (%s) succeeded", record.id, record.kind.value)
        finally:
            self._update_gauges()

    def _finish_cancelled(self, record: JobRecord, shutdown_reason: str | None) -> None:
        """Cancelled on request (no error) or by shutdown (a not-ready problem saying why)."""
        record.state = JobState.CANCELLED
        record.phase = "cancelled"
        record.finished_at = _now()
        if shutdown_reason is not None:
            record.error = EngineStoppedError(shutdown_reason)
        self._update_gauges()

    def _forget_old(self) -> None:
        finished = [r for r in self._jobs.values() if r.state in _FINISHED]
        excess = len(finished) - self._max_finished
        if excess > 0:
            for record in sorted(finished, key=lambda r: r.finished_at or r.created_at)[:excess]:
                del self._jobs[record.id]

    def _update_gauges(self) -> None:
        if self._metrics is None:
            return
        counts = {(k, s): 0 for k in JobKind for s in JobState}
        for record in self._jobs.values():
            counts[(record.kind, record.state)] += 1
        for (kind, state), n in counts.items():
            self._metrics.jobs.labels(kind=kind.value, state=state.value).set(n)


def _without_tracebacks(error: BaseException) -> BaseException:
    """``error`` (and its causes) without their tracebacks: a finished job is kept for a while,
    and a traceback keeps every frame it passed through alive (a failed load's tensors)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return error
