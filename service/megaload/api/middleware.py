"""ASGI middleware: request ids, access logs, HTTP metrics, the request-body limit and the
token check that comes before any body is read.

Pure ASGI (no ``BaseHTTPMiddleware``), so streamed responses pass through untouched.

Request bodies, whatever their framing (``Content-Length`` or ``Transfer-Encoding: chunked``):

* a request that carries a body but no valid token (when a token is configured) is answered
  401 before a byte of its body is read; the route dependency then sees only requests with
  a valid token, and decides their scope;
* a declared ``Content-Length`` over the limit is answered 413 at once;
* every body is counted as it is received: the message that takes it past the limit is
  answered 413 there, and the application is told the client went away (its own answer,
  if any, is dropped), so no more than the limit is ever held;
* those early answers carry ``Connection: close``: the unread rest of the body is never read.

A ``HEAD`` on a path that only declares ``GET`` is run as that ``GET`` (:mod:`.methods`);
the server sends its headers without the body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from megaload_client import problems as p

from ..logs import request_id_var
from ..server import HEAD_EXTENSION
from .methods import head_as_get
from .problems import exception_response, problem, problem_response

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .auth import Authenticator

__all__ = ["RequestContextMiddleware", "MAX_BODY_BYTES"]

logger = logging.getLogger("megaload.access")

MAX_BODY_BYTES = 8 * 1024 * 1024
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = ("/healthz", "/readyz", "/metrics")


class RequestContextMiddleware:
    """Sets the request id (``X-Request-ID`` if the client sent a sane one), echoes it, logs
    one line per request and counts it by route template and status. Bounds request bodies
    to :data:`MAX_BODY_BYTES` and refuses unauthenticated ones before reading them (see the
    module docstring). Turns an exception that escaped every handler into a 500 problem
    (with the request id) before the server sees it."""

    def __init__(
        self,
        app: Any,
        metrics: Metrics | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        auth: Authenticator | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.auth = auth

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
        cut_off = [False]  # this middleware answered while the application was reading the body
        received = [0]
        limit = self.max_body_bytes

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                started_box[0] = True
                status_box[0] = message["status"]
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        async def send_from_app(message: dict) -> None:
            if not cut_off[0]:
                await send_with_id(message)

        async def bounded_receive() -> dict:
            if cut_off[0]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    cut_off[0] = True
                    if not started_box[0]:
                        await _too_large(limit)(scope, receive, send_with_id)
                    return {"type": "http.disconnect"}
            return message

        app_scope = scope
        if scope.get("method") == "HEAD" and head_as_get(scope):
            # the server's scope keeps HEAD, so it drops the body; a streamed body skips producing it
            app_scope = {**scope, "method": "GET", "extensions": {**(scope.get("extensions") or {}), HEAD_EXTENSION: {}}}
        try:
            length = headers.get(b"content-length")
            has_body = b"transfer-encoding" in headers or (length is not None and length.strip() not in (b"", b"0"))
            if has_body and self.auth is not None and self.auth.required:
                if self.auth.scope_of_header(headers.get(b"authorization")) is None:
                    # no valid token: answer before the body is read (the route would say the same after)
                    await _unauthorized(b"authorization" in headers)(scope, receive, send_with_id)
                    return
            if length is not None and _too_long(length, limit):
                await _too_large(limit)(scope, receive, send_with_id)
                return
            try:
                await self.app(app_scope, bounded_receive if has_body else receive, send_from_app)
            except Exception as exc:  # anything the routes' handlers did not map: a 500 problem
                if cut_off[0]:
                    return  # answered 413 already; what the application made of the cut is moot
                if started_box[0]:
                    raise  # the response is under way; the server closes the connection
                await exception_response(exc)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = app_scope.get("route")
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


_CLOSE = {"Connection": "close"}


def _too_large(limit: int) -> Any:
    prob = problem(p.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes", limit=limit)
    return problem_response(prob, _CLOSE)


def _unauthorized(had_header: bool) -> Any:
    detail = "the bearer token is not valid" if had_header else "this service requires 'Authorization: Bearer <token>'"
    return problem_response(
        problem(p.UNAUTHORIZED, detail), {**_CLOSE, "WWW-Authenticate": 'Bearer realm="megaload"'}
    )


def _too_long(raw: bytes, limit: int) -> bool:
    try:
        return int(raw) > limit
    except ValueError:
        return False
