"""The job manager: states, kept exceptions mapped only when answered, shutdown.

Real JobManager on a real event loop; the runners are the test's own coroutines.
"""

from __future__ import annotations

import asyncio

import pytest

from megaload.api.problems import job_body
from megaload.errors import EngineStoppedError, JobNotCancellableError, ModelNotFoundError
from megaload.jobs import JobManager
from megaload_client import problems
from megaload_client.types import JobKind, JobResult, JobState


def run(coro):
    return asyncio.run(coro)


def test_a_job_runs_and_succeeds():
    async def main():
        jobs = JobManager()

        async def runner(handle):
            handle.started("loading")
            handle.progress(0.5, "half")
            return JobResult(model_id="m")

        record = jobs.submit(JobKind.LOAD, runner, target="/ckpt", model_id="m")
        assert record.state is JobState.QUEUED
        await record.task
        return record

    record = run(main())
    assert record.state is JobState.SUCCEEDED and record.progress == 1.0 and record.phase == "done"
    assert record.result == JobResult(model_id="m")
    assert record.started_at is not None and record.finished_at >= record.started_at
    assert job_body(record).error is None


def test_a_failed_job_keeps_its_exception_and_answers_the_problem_of_it():
    async def main():
        jobs = JobManager()

        async def runner(handle):
            handle.started()
            raise ModelNotFoundError("abc")

        record = jobs.submit(JobKind.SAVE, runner, target="/saves/x", model_id="abc")
        await record.task
        return record

    record = run(main())
    assert record.state is JobState.FAILED
    assert isinstance(record.error, ModelNotFoundError)
    assert record.error.__traceback__ is None  # not kept: the frames would be
    wire = job_body(record)
    assert wire.error is not None and wire.error.type == problems.MODEL_NOT_FOUND and wire.error.status == 404


def test_shutdown_cancels_queued_jobs_with_a_not_ready_problem_and_refuses_new_ones():
    async def main():
        jobs = JobManager()
        gate = asyncio.Event()

        async def waits(handle):
            await gate.wait()
            handle.started()
            return JobResult()

        queued = jobs.submit(JobKind.LOAD, waits)
        await asyncio.sleep(0)
        cancelled = jobs.cancel_queued("the service shut down before the job started")
        with pytest.raises(EngineStoppedError):
            jobs.submit(JobKind.LOAD, waits)
        await asyncio.sleep(0)
        return queued, cancelled

    queued, cancelled = run(main())
    assert cancelled == [queued] and queued.state is JobState.CANCELLED
    assert isinstance(queued.error, EngineStoppedError)
    wire = job_body(queued).error
    assert wire.type == problems.NOT_READY and "shut down" in wire.detail


def test_a_running_job_cannot_be_cancelled():
    async def main():
        jobs = JobManager()
        gate = asyncio.Event()

        async def runner(handle):
            handle.started()
            await gate.wait()
            return JobResult()

        record = jobs.submit(JobKind.LOAD, runner)
        await asyncio.sleep(0)
        with pytest.raises(JobNotCancellableError):
            jobs.cancel(record.id)
        gate.set()
        await record.task
        return record

    assert run(main()).state is JobState.SUCCEEDED
