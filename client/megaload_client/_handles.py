"""Handles on remote objects: a resident model, a job. Sync and async side by side.

A handle holds its client and the last state the service reported; methods act on the
object without repeating its id. A job's wait is one exchange (:func:`wait_job`) that
either client drives.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from . import _routes as routes
from ._exceptions import JobCancelledError, JobFailedError, JobTimeoutError
from ._exchange import Deadline, Exchange, Sleep, request
from ._progress import ProgressBar, progress_bar
from .sizes import format_size
from .types import Job, JobKind, JobResult, JobState, ModelInfo, StateDictIndex

if TYPE_CHECKING:
    import torch

    from ._async_client import AsyncClient, TensorStream
    from ._base_client import BaseClient
    from ._client import Client
    from ._download import DownloadResult

__all__ = [
    "ModelHandle",
    "AsyncModelHandle",
    "JobHandle",
    "AsyncJobHandle",
    "TERMINAL_STATES",
    "job_outcome",
    "wait_job",
]

H = TypeVar("H", bound="_JobBase")

TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
DEFAULT_POLL_INTERVAL = 0.5


class _ModelBase:
    def __init__(self, client: Client | AsyncClient, info: ModelInfo) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, checkpoint={self.info.checkpoint_path!r})"


class ModelHandle(_ModelBase):
    """A resident model. ``info`` is its state when last fetched (``refresh()`` updates it).

    The state-dict methods take the same options as the client's (``dtype``, ``keys``,
    ``max_shard_bytes``, ``names="hf"`` for the Hugging Face model, ``tp_rank``/``tp_size``
    for one tensor-parallel rank's slices, ...) and pass them through.
    """

    _client: Client

    def refresh(self) -> ModelInfo:
        self.info = self._client.get_model(self.id).info
        return self.info

    def index(self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any) -> StateDictIndex:
        return self._client.state_dict_index(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    def state_dict(
        self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any
    ) -> dict[str, torch.Tensor]:
        """:meth:`Client.state_dict` of this model; ``out=`` fills tensors you already have."""
        return self._client.state_dict(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    def iter_tensors(
        self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return self._client.iter_tensors(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    def download(
        self, directory: Any, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any
    ) -> DownloadResult:
        return self._client.download(self.id, directory, tp_rank=tp_rank, tp_size=tp_size, **options)

    def save(self, path: str, **options: Any) -> JobHandle:
        return self._client.save(self.id, path, **options)

    def unload(self) -> None:
        self._client.unload(self.id)


class AsyncModelHandle(_ModelBase):
    """:class:`ModelHandle` for :class:`AsyncClient`: the same methods, awaited."""

    _client: AsyncClient

    async def refresh(self) -> ModelInfo:
        self.info = (await self._client.get_model(self.id)).info
        return self.info

    async def index(self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any) -> StateDictIndex:
        return await self._client.state_dict_index(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    async def state_dict(
        self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any
    ) -> dict[str, torch.Tensor]:
        """:meth:`AsyncClient.state_dict` of this model; ``out=`` fills tensors you already have."""
        return await self._client.state_dict(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    def iter_tensors(self, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any) -> TensorStream:
        """``async for name, tensor in model.iter_tensors()`` (``await`` it to fetch the index first)."""
        return self._client.iter_tensors(self.id, tp_rank=tp_rank, tp_size=tp_size, **options)

    async def download(
        self, directory: Any, *, tp_rank: int | None = None, tp_size: int | None = None, **options: Any
    ) -> DownloadResult:
        return await self._client.download(self.id, directory, tp_rank=tp_rank, tp_size=tp_size, **options)

    async def save(self, path: str, **options: Any) -> AsyncJobHandle:
        return await self._client.save(self.id, path, **options)

    async def unload(self) -> None:
        await self._client.unload(self.id)


class _JobBase:
    def __init__(self, client: Client | AsyncClient, job: Job, *, remote: bool = True) -> None:
        self._client = client
        self.job = job
        self._remote = remote  # False: the service started no job (a load found the model resident)

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def state(self) -> JobState:
        return self.job.state

    @property
    def done(self) -> bool:
        return self.job.state in TERMINAL_STATES

    def _model_id(self) -> str:
        job = job_outcome(self.job)
        model_id = job.model_id or (job.result.model_id if job.result else None)
        if job.kind is not JobKind.LOAD or not model_id:
            raise ValueError(f"job {job.id} is a {job.kind.value} job and names no loaded model")
        return model_id

    def _bar(self, progress: bool) -> ProgressBar:
        return progress_bar(progress, total=100, desc=f"{self.job.kind.value} {self.id}", unit="%")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, kind={self.job.kind.value}, state={self.state.value})"

    @classmethod
    def resident(cls: type[H], client: Client | AsyncClient, info: ModelInfo) -> H:
        """The handle of the load that found ``info``'s model already resident (no job)."""
        now = datetime.now(UTC)
        result = JobResult(model=info, model_id=info.id, created=False)
        job = Job(
            id="", kind=JobKind.LOAD, state=JobState.SUCCEEDED, progress=1.0, model_id=info.id,
            target=info.iteration_dir, created_at=now, started_at=now, finished_at=now, result=result,
        )
        return cls(client, job, remote=False)


class JobHandle(_JobBase):
    """A load or save job. ``job`` is its state when last fetched.

    When a ``start_load`` finds the model already resident the service starts no job: the
    handle is then born succeeded, with ``id == ""``, and ``refresh``/``cancel`` do nothing.
    """

    _client: Client

    def refresh(self) -> Job:
        if self._remote:
            self.job = self._client.get_job(self.id).job
        return self.job

    def cancel(self) -> None:
        """Cancel while queued; :class:`JobNotCancellableError` once it runs."""
        if self._remote:
            self._client.cancel_job(self.id)
            self.refresh()

    def wait(
        self, timeout: float | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL, progress: bool = False
    ) -> Job:
        """Poll until the job ends; return it when it succeeded.

        Raises :class:`JobFailedError` (with the service's problem in ``job.error``),
        :class:`JobCancelledError`, or :class:`JobTimeoutError` after ``timeout`` seconds.
        ``progress=True`` shows a tqdm bar when tqdm is installed.
        """
        return self._client._run(wait_job(self, self._client, timeout, poll_interval, progress))

    def model(self) -> ModelHandle:
        """The model a succeeded load job made resident."""
        return self._client.get_model(self._model_id())


class AsyncJobHandle(_JobBase):
    """:class:`JobHandle` for :class:`AsyncClient`: the same methods, awaited."""

    _client: AsyncClient

    async def refresh(self) -> Job:
        if self._remote:
            self.job = (await self._client.get_job(self.id)).job
        return self.job

    async def cancel(self) -> None:
        if self._remote:
            await self._client.cancel_job(self.id)
            await self.refresh()

    async def wait(
        self, timeout: float | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL, progress: bool = False
    ) -> Job:
        return await self._client._run(wait_job(self, self._client, timeout, poll_interval, progress))

    async def model(self) -> AsyncModelHandle:
        return await self._client.get_model(self._model_id())


# ---------------------------------------------------------------------- waiting


def wait_job(
    handle: _JobBase, client: BaseClient, timeout: float | None, poll_interval: float, progress: bool
) -> Exchange[Job]:
    """Poll ``handle``'s job until it ends (updating ``handle.job``); its outcome, or the
    :class:`JobError` that says how it ended, or :class:`JobTimeoutError` after ``timeout``."""
    deadline = Deadline(timeout)
    with handle._bar(progress) as bar:
        while True:
            bar.set_to(100 * handle.job.progress, _phase_text(handle.job))
            if handle.done:
                return job_outcome(handle.job)
            if deadline.expired:
                job = handle.job
                raise JobTimeoutError(
                    f"job {job.id} ({job.kind.value}) still {job.state.value} at {job.progress:.0%} when the wait timed out",
                    job,
                )
            yield Sleep(min(poll_interval, deadline.remaining()))
            if handle._remote:
                handle.job = yield from request(client, routes.get_job(handle.id))


def job_outcome(job: Job) -> Job:
    """``job`` if it succeeded; the matching :class:`JobError` if it failed or was cancelled."""
    if job.state is JobState.FAILED:
        problem = job.error
        reason = (f"{problem.title}: {problem.detail}" if problem.detail else problem.title) if problem else "no detail"
        raise JobFailedError(f"job {job.id} ({job.kind.value}) failed: {reason}", job)
    if job.state is JobState.CANCELLED:
        raise JobCancelledError(f"job {job.id} ({job.kind.value}) was cancelled", job)
    return job


def _phase_text(job: Job) -> str | None:
    """The job's phase, with the bytes read while a load reports them (``loading 412.0 MiB/1.1 GiB``)."""
    if job.state is not JobState.RUNNING or job.bytes_read is None or job.bytes_to_read is None:
        return job.phase
    return f"{job.phase} {format_size(job.bytes_read)}/{format_size(job.bytes_to_read)}"
