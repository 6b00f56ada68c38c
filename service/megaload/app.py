"""The FastAPI application factory.

``create_app(settings)`` builds an app whose lifespan creates exactly one
:class:`~megaload.runtime.Runtime` (engine + registry + jobs) on ``app.state.runtime`` and
tears it down on shutdown. Nothing is built at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from megaload_client._models import ProblemDetail

from . import __version__
from .api import problems
from .api.deps import require_token
from .api.middleware import RequestContextMiddleware
from .api.routes import HUB_ROUTERS, OPEN_ROUTERS, V1_ROUTERS
from .runtime import Runtime
from .settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Load, inspect, serve and save Megatron (megatron-core `torch_dist`) checkpoints.

Every `/v1` route, and the Hugging Face Hub endpoint under `/hf` (resident models as Hub
repositories `megaload/<model id>`, for `huggingface_hub`, `transformers` and inference engines
through `HF_ENDPOINT={base}/hf`), takes `Authorization: Bearer <token>` when the service has a
token. Every
error is `application/problem+json` (RFC 9457) with a stable `type` URI
(`urn:megaload:problem:*`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app for ``settings`` (read from the environment when not given)."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, to_problem=problems.problem_for)
        app.state.runtime = runtime
        app.state.metrics_ref[0] = runtime.metrics
        await runtime.start()
        logger.info(
            "megaload %s: device=%s backend=%s budget=%d bytes, checkpoint roots=%s, save roots=%s, auth=%s",
            __version__,
            runtime.engine.device,
            runtime.engine.backend,
            runtime.registry.budget_bytes,
            [str(r) for r in runtime.paths.checkpoint_roots],
            [str(r) for r in runtime.paths.save_roots],
            "on" if settings.token is not None else "off",
        )
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="megaload",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics_ref = [None]
    problems.install(app)
    for router in OPEN_ROUTERS:
        app.include_router(router)
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_token)])
    for router in HUB_ROUTERS:
        app.include_router(router, prefix=problems.HUB_PREFIX, dependencies=[Depends(require_token)])
    app.add_middleware(_MetricsBoundMiddleware, app_state=app.state)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class _MetricsBoundMiddleware(RequestContextMiddleware):
    """The request middleware, finding the runtime's metrics once the lifespan built them."""

    def __init__(self, app: Any, app_state: Any) -> None:
        super().__init__(app)
        self._state = app_state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.metrics = self._state.metrics_ref[0]
        await super().__call__(scope, receive, send)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in problem_schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault("ProblemDetail", problem_schema)
    app.openapi_schema = schema
    return schema
