"""The one mapping from errors to RFC 9457 problem responses (``application/problem+json``).

:data:`PROBLEM_TYPES` pairs every error class the core raises with a stable problem type from
:mod:`megaload_client.problems`; the most specific class in an exception's MRO wins. The
status and title come with the type. Everything unknown is a 500 ``internal`` problem whose
detail says nothing about the server's insides (the traceback goes to the log).

:func:`install` registers the handlers on an app: library and service errors, request
validation (422 with each failed field), routing errors (404/405) and anything else (500).

Under the Hugging Face Hub endpoint (:data:`HUB_PREFIX`) a problem also carries the headers
``huggingface_hub`` reads to pick its error class and message: ``X-Error-Code``
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, from :class:`~megaload.errors.HubError`),
``X-Repo-Commit`` where the commit is known, and ``X-Error-Message`` (the detail).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from megaload_client import problems as p
from megaload_client.types import Job, ProblemDetail, ValidationErrorItem

from .. import checkpoint, streaming
from ..errors import (
    BadRequestError,
    EngineStoppedError,
    EntryNotFoundError,
    ForbiddenPathError,
    HubError,
    InsufficientMemoryError,
    InsufficientScopeError,
    JobNotCancellableError,
    JobNotFoundError,
    MemoryWaitTimeoutError,
    ModelNotFoundError,
    NotReadyError,
    RepoNotFoundError,
    RevisionNotFoundError,
    ServiceError,
    UnauthorizedError,
)
from ..jobs import JobRecord
from ..logs import current_request_id
from .methods import allowed_methods

__all__ = [
    "PROBLEM_TYPES",
    "PROBLEM_MEDIA_TYPE",
    "HUB_PREFIX",
    "problem_for",
    "job_body",
    "problem_response",
    "install",
    "error_responses",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

HUB_PREFIX = "/hf"
"""Where the Hugging Face Hub endpoint is mounted (:mod:`megaload.api.routes.hub`)."""

_MAX_ERROR_MESSAGE_CHARS = 1000

PROBLEM_TYPES: dict[type[BaseException], str] = {
    # the library's CheckpointError tree
    checkpoint.CheckpointError: p.BAD_REQUEST,
    checkpoint.CheckpointNotFoundError: p.CHECKPOINT_NOT_FOUND,
    checkpoint.NotACheckpointError: p.NOT_A_CHECKPOINT,
    checkpoint.UnsupportedCheckpointError: p.UNSUPPORTED_CHECKPOINT,
    checkpoint.UnmappableModelError: p.UNMAPPABLE_MODEL,
    checkpoint.CorruptCheckpointError: p.CORRUPT_CHECKPOINT,
    checkpoint.UnsafeCheckpointError: p.UNSAFE_CHECKPOINT,
    checkpoint.IncompatibleConfigError: p.INCOMPATIBLE_CONFIG,
    checkpoint.InvalidDtypeError: p.INVALID_DTYPE,
    checkpoint.TokenizerError: p.TOKENIZER_ERROR,
    checkpoint.CheckpointExistsError: p.CHECKPOINT_EXISTS,
    checkpoint.OutsideRootsError: p.FORBIDDEN_PATH,
    checkpoint.DistributedContextError: p.INTERNAL,
    # the service's ServiceError tree
    ServiceError: p.INTERNAL,
    BadRequestError: p.BAD_REQUEST,
    UnauthorizedError: p.UNAUTHORIZED,
    InsufficientScopeError: p.INSUFFICIENT_SCOPE,
    ForbiddenPathError: p.FORBIDDEN_PATH,
    ModelNotFoundError: p.MODEL_NOT_FOUND,
    JobNotFoundError: p.JOB_NOT_FOUND,
    JobNotCancellableError: p.JOB_NOT_CANCELLABLE,
    InsufficientMemoryError: p.INSUFFICIENT_MEMORY,
    NotReadyError: p.NOT_READY,
    EngineStoppedError: p.NOT_READY,
    MemoryWaitTimeoutError: p.NOT_READY,
    HubError: p.NOT_FOUND,
    RepoNotFoundError: p.REPO_NOT_FOUND,
    RevisionNotFoundError: p.REVISION_NOT_FOUND,
    EntryNotFoundError: p.ENTRY_NOT_FOUND,
    # the streaming library
    streaming.StreamingError: p.INTERNAL,
    streaming.InvalidShardOptionsError: p.VALIDATION,
    streaming.InvalidKeyPatternError: p.BAD_REQUEST,
    streaming.ShardNotFoundError: p.SHARD_NOT_FOUND,
    streaming.KeysNotFoundError: p.KEYS_NOT_FOUND,
    streaming.RangeNotSatisfiableError: p.RANGE_NOT_SATISFIABLE,
    streaming.PlanMismatchError: p.INTERNAL,
}

_STATUS_TYPES = {
    400: p.BAD_REQUEST,
    401: p.UNAUTHORIZED,
    404: p.NOT_FOUND,
    405: p.METHOD_NOT_ALLOWED,
    413: p.PAYLOAD_TOO_LARGE,
    416: p.RANGE_NOT_SATISFIABLE,
    422: p.VALIDATION,
    503: p.NOT_READY,
}


def _problem_type(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        found = PROBLEM_TYPES.get(cls)
        if found is not None:
            return found
    return None


def problem(type_: str, detail: str | None = None, *, status: int | None = None, **extensions: Any) -> ProblemDetail:
    """A problem of a known type (status and title from the type)."""
    return ProblemDetail(
        type=type_,
        title=p.PROBLEM_TITLES.get(type_, "Error"),
        status=status or p.PROBLEM_STATUS.get(type_, 500),
        detail=detail,
        request_id=current_request_id(),
        **{k: v for k, v in extensions.items() if v is not None},
    )


def job_body(record: JobRecord) -> Job:
    """A job as answered: its error, if any, mapped by :func:`problem_for`."""
    return record.to_wire(problem_for)


def problem_for(exc: BaseException) -> ProblemDetail:
    """The problem detail of an exception (mapped through :data:`PROBLEM_TYPES`)."""
    type_ = _problem_type(exc)
    if type_ is None or type_ == p.INTERNAL:
        return problem(p.INTERNAL, "the server failed to handle the request; the log has the details")
    ext: dict[str, Any] = {}
    for name in ("path", "field", "limit", "bytes_needed", "bytes_available", "scope"):
        value = getattr(exc, name, None)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            ext[name] = value
    if isinstance(exc, InsufficientMemoryError):
        ext["budget_bytes"] = exc.budget_bytes
    if isinstance(exc, streaming.KeysNotFoundError):
        ext["key_prefixes"] = exc.key_prefixes
    if isinstance(exc, streaming.InvalidShardOptionsError) and not isinstance(exc, streaming.InvalidKeyPatternError):
        if not isinstance(exc.limit, int):
            ext.pop("limit", None)
    return problem(type_, str(exc), **ext)


def _headers_for(exc: BaseException | None, prob: ProblemDetail) -> dict[str, str]:
    headers: dict[str, str] = {}
    if prob.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="megaload"'
    if isinstance(exc, InsufficientScopeError):  # RFC 6750, section 3.1
        headers["WWW-Authenticate"] = f'Bearer realm="megaload", error="insufficient_scope", scope="{exc.scope}"'
    if isinstance(exc, NotReadyError) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, streaming.RangeNotSatisfiableError):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if isinstance(exc, HubError):
        headers["X-Error-Code"] = exc.hub_code
        if exc.commit:
            headers["X-Repo-Commit"] = exc.commit
    return headers


_NOT_HEADER_TEXT = re.compile(r"[^\x20-\x7e]")


def _hub_headers(request: Request, prob: ProblemDetail, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus ``X-Error-Message`` when the request is for the Hub endpoint."""
    path = request.scope.get("path", "")
    if path == HUB_PREFIX or path.startswith(HUB_PREFIX + "/"):
        message = " ".join((prob.detail or prob.title).split())
        # a header value holds printable ASCII only: anything else (a request's own control
        # characters or non-ASCII text echoed in the detail) is written as an escape
        text = _NOT_HEADER_TEXT.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)
        headers["X-Error-Message"] = text[:_MAX_ERROR_MESSAGE_CHARS]
    return headers


def problem_response(prob: ProblemDetail, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        prob.model_dump(mode="json", exclude_none=True),
        status_code=prob.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def exception_response(exc: BaseException, request: Request | None = None) -> JSONResponse:
    prob = problem_for(exc)
    if prob.status >= 500 and prob.type == p.INTERNAL:
        logger.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
    headers = _headers_for(exc, prob)
    if request is not None:
        headers = _hub_headers(request, prob, headers)
    return problem_response(prob, headers)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return exception_response(exc, request)


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = []
    for err in exc.errors():
        loc = [x if isinstance(x, (str, int)) else str(x) for x in err.get("loc", ())]
        items.append(ValidationErrorItem(loc=loc, msg=str(err.get("msg", "")), type=str(err.get("type", ""))))
    first = items[0] if items else None
    field = ".".join(str(x) for x in first.loc[1:]) if first is not None and len(first.loc) > 1 else None
    if first is not None:
        where = ".".join(str(x) for x in first.loc) or "request"
        detail = f"{where}: {first.msg}" + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")
    else:
        detail = "the request does not match its schema"
    prob = problem(p.VALIDATION, detail, field=field, limit=_limit(exc.errors()), errors=items)
    return problem_response(prob, _hub_headers(request, prob, {}))


def _limit(errors: Any) -> int | None:
    """The bound the first failed field broke (``ge``, ``le``, ``max_length``...), if numeric."""
    ctx = (errors[0].get("ctx") if errors else None) or {}
    for name in ("ge", "le", "gt", "lt", "max_length", "min_length"):
        value = ctx.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    type_ = _STATUS_TYPES.get(exc.status_code, p.INTERNAL if exc.status_code >= 500 else p.BAD_REQUEST)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = allowed_methods(request.scope)
        headers["Allow"] = ", ".join(allowed)  # every route of the path, not only the first one found
        detail = f"method {request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
    prob = problem(type_, detail, status=exc.status_code)
    return problem_response(prob, _hub_headers(request, prob, headers))


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    for cls in (checkpoint.CheckpointError, ServiceError, streaming.StreamingError):
        app.add_exception_handler(cls, _on_error)
    # Other exceptions reach RequestContextMiddleware, which answers a 500 problem.


def error_responses(*types: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem types a route may answer."""
    by_status: dict[int, list[str]] = {}
    for type_ in (*types, p.INTERNAL):
        by_status.setdefault(p.PROBLEM_STATUS[type_], []).append(type_)
    out: dict[int | str, dict[str, Any]] = {}
    for status, kinds in sorted(by_status.items()):
        out[status] = {
            "description": "; ".join(f"`{k}`" for k in kinds),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        }
    return out
