"""``/v1/models``: load (or find) resident models, list, describe, evict and save them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse

from megaload_client import problems as p
from megaload_client.types import Job, LoadModelRequest, ModelInfo, ModelList, SaveModelRequest

from ..deps import RuntimeDep
from ..problems import error_responses, job_body
from .checkpoints import CHECKPOINT_PATH_ERRORS

router = APIRouter(prefix="/models", tags=["models"])

ModelId = Annotated[str, Path(min_length=1, max_length=128, description="a model id from POST /v1/models")]


def _created(body: ModelInfo | Job, status: int, location: str) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers={"Location": location})


@router.post(
    "",
    status_code=201,
    response_model=ModelInfo,
    summary="Load a checkpoint (201), find it already resident (200), or start a load job (202, wait=false)",
    responses={
        200: {"model": ModelInfo, "description": "already resident (or loaded by an identical request in flight)"},
        201: {"model": ModelInfo, "description": "loaded by this request; Location: /v1/models/{id}"},
        202: {"model": Job, "description": "wait=false: a load job; Location: /v1/jobs/{id}"},
        **error_responses(
            *CHECKPOINT_PATH_ERRORS,
            p.INCOMPATIBLE_CONFIG,
            p.INVALID_DTYPE,
            p.PAYLOAD_TOO_LARGE,
            p.NOT_READY,
            p.INSUFFICIENT_MEMORY,
        ),
    },
)
async def load_model(body: LoadModelRequest, runtime: RuntimeDep) -> JSONResponse:
    if not body.wait:
        job = await runtime.submit_load(body)
        return _created(job_body(job), 202, f"/v1/jobs/{job.id}")
    entry, created = await runtime.load_model(body)
    return _created(runtime.model_info(entry), 201 if created else 200, f"/v1/models/{entry.id}")


@router.get("", response_model=ModelList, summary="Resident models", responses=error_responses(p.UNAUTHORIZED))
async def list_models(runtime: RuntimeDep) -> ModelList:
    return runtime.list_models()


@router.get(
    "/{model_id}",
    response_model=ModelInfo,
    summary="One resident model",
    responses=error_responses(p.VALIDATION, p.UNAUTHORIZED, p.MODEL_NOT_FOUND),
)
async def get_model(model_id: ModelId, runtime: RuntimeDep) -> ModelInfo:
    return runtime.get_model(model_id)


@router.delete(
    "/{model_id}",
    status_code=204,
    response_class=Response,
    summary="Evict a model (its memory is released once active streams finish)",
    responses=error_responses(p.VALIDATION, p.UNAUTHORIZED, p.MODEL_NOT_FOUND),
)
async def delete_model(model_id: ModelId, runtime: RuntimeDep) -> Response:
    await runtime.evict(model_id)
    return Response(status_code=204)


@router.post(
    "/{model_id}/save",
    status_code=202,
    response_model=Job,
    summary="Save a resident model as a Megatron checkpoint (a job; Location: /v1/jobs/{id})",
    responses=error_responses(
        p.VALIDATION,
        p.BAD_REQUEST,
        p.UNAUTHORIZED,
        p.FORBIDDEN_PATH,
        p.MODEL_NOT_FOUND,
        p.CHECKPOINT_NOT_FOUND,
        p.CHECKPOINT_EXISTS,
        p.PAYLOAD_TOO_LARGE,
        p.NOT_READY,
    ),
)
async def save_model(model_id: ModelId, body: SaveModelRequest, runtime: RuntimeDep) -> JSONResponse:
    job = await runtime.submit_save(model_id, body)
    return _created(job_body(job), 202, f"/v1/jobs/{job.id}")
