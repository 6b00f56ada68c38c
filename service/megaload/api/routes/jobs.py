"""``/v1/jobs``: background loads and saves: state, progress, timestamps, result, error."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from megaload_client import problems as p
from megaload_client.types import Job, JobList

from ..deps import RuntimeDep
from ..problems import error_responses, job_body

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=128, description="a job id")]


@router.get("", response_model=JobList, summary="Known jobs, oldest first", responses=error_responses(p.UNAUTHORIZED))
async def list_jobs(runtime: RuntimeDep) -> JobList:
    return JobList(jobs=[job_body(r) for r in runtime.list_jobs()])


@router.get(
    "/{job_id}",
    response_model=Job,
    summary="One job",
    responses=error_responses(p.VALIDATION, p.UNAUTHORIZED, p.JOB_NOT_FOUND),
)
async def get_job(job_id: JobId, runtime: RuntimeDep) -> Job:
    return job_body(runtime.get_job(job_id))


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    summary="Cancel a queued job (409 once it runs)",
    responses=error_responses(p.VALIDATION, p.UNAUTHORIZED, p.JOB_NOT_FOUND, p.JOB_NOT_CANCELLABLE),
)
async def cancel_job(job_id: JobId, runtime: RuntimeDep) -> Response:
    runtime.cancel_job(job_id)
    return Response(status_code=204)
