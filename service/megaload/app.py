"""The FastAPI application factory.

``create_app(settings)`` builds an app and its metrics (shared by the request middleware and
the runtime); its lifespan creates exactly one :class:`~megaload.runtime.Runtime` (the owner
of engine, registry, jobs, shard plans) on ``app.state.runtime`` and tears it down on
shutdown. Nothing is built at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from megaload_client.types import ProblemDetail

from . import __version__
from .api import problems
from .api.auth import Authenticator, require_token
from .api.middleware import RequestContextMiddleware
from .api.routes import HUB_ROUTERS, OPEN_ROUTERS, V1_ROUTERS
from .api.routes.pages import install_docs
from .metrics import Metrics
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
    metrics = Metrics()  # the request middleware's and the runtime's

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.create(settings, metrics=metrics)
        app.state.runtime = runtime
        await runtime.start()
        logger.info(
            "megaload %s: device=%s backend=%s budget=%d bytes, checkpoint roots=%s, save roots=%s, auth=%s",
            __version__,
            runtime.engine.device,
            runtime.engine.backend,
            runtime.registry.budget_bytes,
            [str(r) for r in runtime.paths.checkpoint_roots],
            [str(r) for r in runtime.paths.save_roots],
            _auth_summary(settings),
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
        docs_url=None,  # install_docs serves /docs and /redoc with assets from the package (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.auth = Authenticator.from_settings(settings)
    problems.install(app)
    for router in OPEN_ROUTERS:
        app.include_router(router)
    install_docs(app)
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_token)])
    for router in HUB_ROUTERS:
        app.include_router(router, prefix=problems.HUB_PREFIX, dependencies=[Depends(require_token)])
    app.add_middleware(RequestContextMiddleware, auth=app.state.auth, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _auth_summary(settings: Settings) -> str:
    if settings.token is None:
        return "off"
    readers = len(settings.read_tokens)
    return f"operator token and {readers} read token{'s' if readers != 1 else ''}" if readers else "operator token"


_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


def _declare_auth(schema: dict[str, Any], auth: Authenticator) -> None:
    """Bearer auth in the schema only when a token is configured; each guarded operation then
    says the scope it needs (``x-megaload-scope``: ``read`` or ``operator``)."""
    components = schema.get("components", {})
    if not auth.required:
        components.pop("securitySchemes", None)
        if not components:
            schema.pop("components", None)
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            guarded = "security" in operation
            if not auth.required:
                operation.pop("security", None)
                operation.pop("x-megaload-scope", None)
            elif guarded:
                readable = method in ("get", "head") or operation.get("x-megaload-scope") == "read"
                operation["x-megaload-scope"] = "read" if readable else "operator"


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _declare_auth(schema, app.state.auth)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem_schema = ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in problem_schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault("ProblemDetail", problem_schema)
    app.openapi_schema = schema
    return schema
