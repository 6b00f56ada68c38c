"""Exceptions raised by the client.

Every error the service answers is a problem document (RFC 9457) with a stable ``type``;
:func:`make_status_error` is the one place that turns a response into the class below that
matches its type (or, for an unknown type, its status). Classes also derive from the Python
built-in that fits, so ``except LookupError`` or ``except FileExistsError`` work as expected.

    MegaloadError
    ├── APIConnectionError          (also ConnectionError) no answer: refused, reset, DNS...
    │   └── APITimeoutError         (also TimeoutError) the answer took too long
    ├── APIStatusError              the service answered an error status; ``.problem`` holds it
    │   ├── BadRequestError                 400  (also ValueError)
    │   ├── AuthenticationError             401  (also PermissionError)
    │   ├── PermissionDeniedError           403  (also PermissionError) path outside the roots, read token on a write
    │   ├── NotFoundError                   404  (also LookupError)
    │   │   ├── CheckpointNotFoundError          (also FileNotFoundError)
    │   │   ├── ModelNotFoundError
    │   │   ├── ShardNotFoundError
    │   │   ├── KeysNotFoundError                a ``keys`` filter matching no tensor (``problem.key_prefixes``)
    │   │   ├── JobNotFoundError
    │   │   ├── RepoNotFoundError                Hub endpoint: no repository megaload/<id>
    │   │   ├── RevisionNotFoundError            Hub endpoint: not main nor the current commit
    │   │   └── EntryNotFoundError               Hub endpoint: no such file in the repository
    │   ├── MethodNotAllowedError           405
    │   ├── ConflictError                   409
    │   │   ├── CheckpointExistsError            (also FileExistsError)
    │   │   └── JobNotCancellableError
    │   ├── PayloadTooLargeError            413  (also ValueError)
    │   ├── RangeNotSatisfiableError        416
    │   ├── UnprocessableEntityError        422  (also ValueError) request validation
    │   │   ├── NotACheckpointError
    │   │   ├── UnsupportedCheckpointError
    │   │   │   └── UnmappableModelError     no Hugging Face form (``problem.field`` says why)
    │   │   ├── CorruptCheckpointError
    │   │   │   └── UnsafeCheckpointError
    │   │   ├── IncompatibleConfigError
    │   │   ├── InvalidDtypeError
    │   │   └── TokenizerError
    │   ├── RateLimitError                  429
    │   └── ServerError                     5xx
    │       ├── InternalServerError         500
    │       ├── ServiceUnavailableError     503  not ready yet
    │       └── InsufficientMemoryError     507  the model cannot fit the memory budget
    ├── IntegrityError              (also ValueError) received bytes contradict the index
    ├── ChecksumUnavailableError    (also ImportError) verify=True but xxhash does not import here
    └── JobError                    a job did not succeed; ``.job`` holds its last state
        ├── JobFailedError
        ├── JobCancelledError
        └── JobTimeoutError         (also TimeoutError) ``wait(timeout=...)`` ran out
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from . import problems as p
from .types import ProblemDetail

if TYPE_CHECKING:
    from pathlib import Path

    from .types import Job, Readiness


class MegaloadError(Exception):
    """Base class of every error this package raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

class APIConnectionError(MegaloadError, ConnectionError):
    """The service could not be reached, or the connection broke (after any retries)."""

class APITimeoutError(APIConnectionError, TimeoutError):
    """Connecting, sending or reading took longer than the timeout."""

class ReadyTimeoutError(MegaloadError, TimeoutError):
    """``wait_ready`` spent its timeout before ``/readyz`` said ready; ``readiness`` is the
    service's last answer (``None`` when it never answered: refused, unreachable)."""

    def __init__(self, message: str, readiness: Readiness | None = None) -> None:
        super().__init__(message)
        self.readiness = readiness

class ForeignFilesError(MegaloadError, FileExistsError):
    """A download directory holds ``*.safetensors`` files the download did not write
    (``paths``); see :mod:`megaload_client._download`."""

    def __init__(self, message: str, paths: list[Path]) -> None:
        super().__init__(message)
        self.paths = paths

class APIStatusError(MegaloadError):
    """The service answered with an error status.

    ``problem`` is the parsed problem document (synthesized from the status when the body
    was not one); ``status_code``, ``type``, ``title`` and ``detail`` are shortcuts to it.
    """

    def __init__(self, problem: ProblemDetail, response: httpx.Response | None = None) -> None:
        self.problem = problem
        self.response = response
        self.status_code = problem.status
        self.type = problem.type
        self.title = problem.title
        self.detail = problem.detail
        self.request_id = problem.request_id or (
            response.headers.get("x-request-id") if response is not None else None
        )
        text = f"{problem.status} {problem.title}"
        super().__init__(f"{text}: {problem.detail}" if problem.detail else text)

class BadRequestError(APIStatusError, ValueError): ...
class AuthenticationError(APIStatusError, PermissionError): ...
class PermissionDeniedError(APIStatusError, PermissionError): ...
class NotFoundError(APIStatusError, LookupError): ...
class CheckpointNotFoundError(NotFoundError, FileNotFoundError): ...
class ModelNotFoundError(NotFoundError): ...
class ShardNotFoundError(NotFoundError): ...
class KeysNotFoundError(NotFoundError): ...
class JobNotFoundError(NotFoundError): ...
class RepoNotFoundError(NotFoundError): ...
class RevisionNotFoundError(NotFoundError): ...
class EntryNotFoundError(NotFoundError): ...
class MethodNotAllowedError(APIStatusError): ...
class ConflictError(APIStatusError): ...
class CheckpointExistsError(ConflictError, FileExistsError): ...
class JobNotCancellableError(ConflictError): ...
class PayloadTooLargeError(APIStatusError, ValueError): ...
class RangeNotSatisfiableError(APIStatusError): ...
class UnprocessableEntityError(APIStatusError, ValueError): ...
class NotACheckpointError(UnprocessableEntityError): ...
class UnsupportedCheckpointError(UnprocessableEntityError): ...
class UnmappableModelError(UnsupportedCheckpointError): ...
class CorruptCheckpointError(UnprocessableEntityError): ...
class UnsafeCheckpointError(CorruptCheckpointError): ...
class IncompatibleConfigError(UnprocessableEntityError): ...
class InvalidDtypeError(UnprocessableEntityError): ...
class TokenizerError(UnprocessableEntityError): ...
class RateLimitError(APIStatusError): ...
class ServerError(APIStatusError): ...
class InternalServerError(ServerError): ...
class ServiceUnavailableError(ServerError): ...
class InsufficientMemoryError(ServerError): ...

class IntegrityError(MegaloadError, ValueError):
    """Bytes received from the service do not match its index (size, checksum or format)."""


class ChecksumUnavailableError(MegaloadError, ImportError):
    """Checksums are to be verified but xxhash, the client's dependency that computes them,
    does not import in this interpreter (reinstall the client, or pass ``verify=False``)."""


class JobError(MegaloadError):
    """A job ended (or was waited for) without succeeding; ``job`` is its last known state."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job

class JobFailedError(JobError):
    """The job failed; ``job.error`` holds the service's problem document."""

class JobCancelledError(JobError): ...

class JobTimeoutError(JobError, TimeoutError): ...

_BY_TYPE: dict[str, type[APIStatusError]] = {
    p.VALIDATION: UnprocessableEntityError,
    p.BAD_REQUEST: BadRequestError,
    p.UNAUTHORIZED: AuthenticationError,
    p.FORBIDDEN_PATH: PermissionDeniedError,
    p.INSUFFICIENT_SCOPE: PermissionDeniedError,
    p.NOT_FOUND: NotFoundError,
    p.CHECKPOINT_NOT_FOUND: CheckpointNotFoundError,
    p.MODEL_NOT_FOUND: ModelNotFoundError,
    p.SHARD_NOT_FOUND: ShardNotFoundError,
    p.KEYS_NOT_FOUND: KeysNotFoundError,
    p.JOB_NOT_FOUND: JobNotFoundError,
    p.REPO_NOT_FOUND: RepoNotFoundError,
    p.REVISION_NOT_FOUND: RevisionNotFoundError,
    p.ENTRY_NOT_FOUND: EntryNotFoundError,
    p.METHOD_NOT_ALLOWED: MethodNotAllowedError,
    p.CHECKPOINT_EXISTS: CheckpointExistsError,
    p.JOB_NOT_CANCELLABLE: JobNotCancellableError,
    p.PAYLOAD_TOO_LARGE: PayloadTooLargeError,
    p.RANGE_NOT_SATISFIABLE: RangeNotSatisfiableError,
    p.NOT_A_CHECKPOINT: NotACheckpointError,
    p.UNSUPPORTED_CHECKPOINT: UnsupportedCheckpointError,
    p.UNMAPPABLE_MODEL: UnmappableModelError,
    p.CORRUPT_CHECKPOINT: CorruptCheckpointError,
    p.UNSAFE_CHECKPOINT: UnsafeCheckpointError,
    p.INCOMPATIBLE_CONFIG: IncompatibleConfigError,
    p.INVALID_DTYPE: InvalidDtypeError,
    p.TOKENIZER_ERROR: TokenizerError,
    p.NOT_READY: ServiceUnavailableError,
    p.INSUFFICIENT_MEMORY: InsufficientMemoryError,
    p.INTERNAL: InternalServerError,
}
_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: PayloadTooLargeError,
    416: RangeNotSatisfiableError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    500: InternalServerError,
    503: ServiceUnavailableError,
    507: InsufficientMemoryError,
}
_MAX_DETAIL_CHARS = 500

def _problem_of(response: httpx.Response) -> ProblemDetail:
    """The response's problem document, or one made up from its status and body text."""
    status = response.status_code
    try:
        body = response.content
    except httpx.ResponseNotRead:  # a streamed response whose body the caller did not read
        body = b""
    if body:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict):
            data.setdefault("status", status)
            data.setdefault("title", response.reason_phrase or f"HTTP {status}")
            if not isinstance(data.get("detail"), (str, type(None))):
                data["detail"] = json.dumps(data["detail"])[:_MAX_DETAIL_CHARS]
            try:
                return ProblemDetail.model_validate(data)
            except ValidationError:
                pass
    text = body.decode("utf-8", "replace").strip()[:_MAX_DETAIL_CHARS] if body else None
    title = response.reason_phrase or f"HTTP {status}"
    return ProblemDetail(title=title, status=status, detail=text or None)

def make_status_error(response: httpx.Response) -> APIStatusError:
    """The exception for an error response: by problem ``type`` first, then by status.

    The response body must have been read (``response.read()``) for its problem document to
    be used; for a streamed or ``HEAD`` response the status alone decides.
    """
    problem = _problem_of(response)
    cls = _BY_TYPE.get(problem.type) or _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else APIStatusError
    return cls(problem, response)

def connection_error(error: httpx.TransportError, request: httpx.Request | None = None) -> APIConnectionError:
    """Wrap an httpx transport failure; the caller raises it ``from error``."""
    where = f" ({request.method} {request.url})" if request is not None else ""
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"timed out talking to the service{where}: {error or type(error).__name__}")
    reason = str(error) or type(error).__name__
    return APIConnectionError(f"could not talk to the service{where}: {reason}")
