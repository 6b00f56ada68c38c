"""``GET /v1/info``: versions, backend, device, world size, memory budget and use, roots."""

from __future__ import annotations

from fastapi import APIRouter

from megaload_client import problems as p
from megaload_client.types import Info

from ..deps import RuntimeDep
from ..problems import error_responses

router = APIRouter(tags=["service"])


@router.get("/info", response_model=Info, summary="Service information", responses=error_responses(p.UNAUTHORIZED))
async def get_info(runtime: RuntimeDep) -> Info:
    return runtime.info()
