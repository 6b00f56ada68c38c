"""Dependency aliases, so handlers read as plain signatures::

    async def get_model(model_id: str, runtime: RuntimeDep) -> ModelInfo: ...

``AuthDep`` guards the ``/v1`` router (and any router that declares it): when a token is
configured, the request must carry ``Authorization: Bearer <token>`` holding the operator's
token, or a read token for GET/HEAD and routes marked read-only (:mod:`megaload.api.auth`);
comparisons are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..runtime import Runtime
from .auth import READ_ONLY, require_token

__all__ = ["RuntimeDep", "AuthDep", "get_runtime", "require_token", "READ_ONLY"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

AuthDep = Depends(require_token)
