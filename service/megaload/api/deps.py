"""Dependency aliases, so handlers read as plain signatures::

    async def get_model(model_id: str, runtime: RuntimeDep) -> ModelInfo: ...

``AuthDep`` guards the ``/v1`` router: when a token is configured, the request must carry
``Authorization: Bearer <token>``; the comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import UnauthorizedError
from ..runtime import Runtime

__all__ = ["RuntimeDep", "AuthDep", "get_runtime", "require_token"]

_bearer = HTTPBearer(auto_error=False, description="the service's API token (when one is configured)")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_token(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = runtime.settings.token_value
    if expected is None:
        return
    if credentials is None:
        raise UnauthorizedError("this service requires 'Authorization: Bearer <token>'")
    given = credentials.credentials.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise UnauthorizedError("the bearer token is not valid")


AuthDep = Depends(require_token)
