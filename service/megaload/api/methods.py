"""Which methods a path serves, found by asking the app's routes themselves.

Starlette answers 405 with the methods of the first route whose path matched, so a path
served by two routes (``GET /v1/models`` and ``POST /v1/models``) got an ``Allow`` header
naming one of them. :func:`allowed_methods` tries each method against every route, as the
router does, so it sees them all, however the routes are nested.

FastAPI serves ``HEAD`` only where a route declares it; RFC 9110 (9.3.2) wants it wherever
``GET`` is. :func:`head_as_get` tells the request middleware when to run a ``HEAD`` as the
``GET`` of the same path; the server (uvicorn) sends the headers and drops the body.
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match

__all__ = ["allowed_methods", "head_as_get", "METHODS"]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _serves(routes: Any, scope: dict, method: str) -> bool:
    probe = {**scope, "method": method}
    return any(route.matches(probe)[0] is Match.FULL for route in routes)


def _routes(scope: dict) -> Any:
    app = scope.get("app")
    router = getattr(app, "router", None)
    return getattr(router, "routes", ())


def allowed_methods(scope: dict) -> list[str]:
    """The methods the request's path is served with (HEAD wherever GET is), in a fixed order."""
    routes = _routes(scope)
    found = {m for m in METHODS if _serves(routes, scope, m)}
    if "GET" in found:
        found.add("HEAD")
    return [m for m in METHODS if m in found]


def head_as_get(scope: dict) -> bool:
    """Whether a ``HEAD`` request must be run as ``GET``: no route serves HEAD, one serves GET."""
    routes = _routes(scope)
    return not _serves(routes, scope, "HEAD") and _serves(routes, scope, "GET")
