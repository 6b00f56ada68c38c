"""ASGI middleware: request ids, access logs, HTTP metrics and the request-body limit.

Pure ASGI (no ``BaseHTTPMiddleware``), so streamed responses pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from megaload_client import _problems as p

from ..logs import request_id_var
from .problems import exception_response, problem, problem_response

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["RequestContextMiddleware", "MAX_BODY_BYTES"]

logger = logging.getLogger("megaload.access")

MAX_BODY_BYTES = 8 * 1024 * 1024
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = ("/healthz", "/readyz", "/metrics")


class RequestContextMiddleware:
    """Sets the request id (``X-Request-ID`` if the client sent a sane one), echoes it, logs
    one line per request and counts it by route template and status. Refuses bodies whose
    ``Content-Length`` exceeds :data:`MAX_BODY_BYTES` with 413. Turns an exception that
    escaped every handler into a 500 problem (with the request id) before the server sees it."""

    def __init__(self, app: Any, metrics: Metrics | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_box = [500]
        started_box = [False]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                started_box[0] = True
                status_box[0] = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and _too_long(length, self.max_body_bytes):
                prob = problem(
                    p.PAYLOAD_TOO_LARGE,
                    f"request body is larger than {self.max_body_bytes} bytes",
                    limit=self.max_body_bytes,
                )
                await problem_response(prob)(scope, receive, send_with_id)
                return
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:  # anything the routes' handlers did not map: a 500 problem
                if started_box[0]:
                    raise  # the response is under way; the server closes the connection
                await exception_response(exc)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "?")
            status = status_box[0]
            if self.metrics is not None:
                self.metrics.http_requests.labels(method=method, route=template, status=str(status)).inc()
                self.metrics.http_seconds.labels(method=method, route=template).observe(elapsed)
            level = logging.DEBUG if scope.get("path") in _QUIET_PATHS and status < 400 else logging.INFO
            logger.log(
                level,
                "%s %s -> %d in %.1f ms",
                method,
                scope.get("path"),
                status,
                elapsed * 1000,
                extra={"method": method, "route": template, "status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)


def _too_long(raw: bytes, limit: int) -> bool:
    try:
        return int(raw) > limit
    except ValueError:
        return False
