"""Liveness, readiness and metrics: open routes (no token), answered on the event loop."""

from __future__ import annotations

from fastapi import APIRouter, Response

from megaload_client import problems as p
from megaload_client.types import Health, Readiness

from ...metrics import CONTENT_TYPE_LATEST
from ..deps import RuntimeDep
from ..problems import error_responses

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health, summary="Liveness: 200 while the process serves")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: 200 once the distributed context is up and the engine alive",
    responses=error_responses(p.NOT_READY),
)
async def readyz(runtime: RuntimeDep) -> Readiness:
    runtime.check_readiness()
    return Readiness(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "metrics"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.render_metrics(), media_type=CONTENT_TYPE_LATEST)
