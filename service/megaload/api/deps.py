"""Dependency aliases, so handlers read as plain signatures::

    async def get_model(model_id: str, runtime: RuntimeDep) -> ModelInfo: ...

The runtime is the routes' one entry point (:class:`~megaload.runtime.Runtime`). The bearer
token is checked by :func:`megaload.api.auth.require_token`, which the app mounts on the
``/v1`` and ``/hf`` routers; :data:`READ_ONLY` marks a non-GET route read tokens may call.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..runtime import Runtime
from .auth import READ_ONLY

__all__ = ["RuntimeDep", "get_runtime", "READ_ONLY"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
