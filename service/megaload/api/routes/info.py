"""``GET /v1/info``: versions, backend, device, world size, memory budget and use, roots."""

from __future__ import annotations

from fastapi import APIRouter

from megaload_client import _problems as p
from megaload_client._models import Info

from ..deps import RuntimeDep
from ..problems import error_responses

router = APIRouter(tags=["service"])


@router.get("/info", response_model=Info, summary="Service information", responses=error_responses(p.UNAUTHORIZED))
async def get_info(runtime: RuntimeDep) -> Info:
    return runtime.info()
