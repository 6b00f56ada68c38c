"""Errors raised by the service core (registry, jobs, path policy, engine).

The library's :class:`~megaload.checkpoint.CheckpointError` tree covers what is wrong with a
checkpoint; these cover what is wrong with a request to the service. The HTTP layer maps
both, in one table (:mod:`megaload.api.problems`), to problem responses.

    ServiceError
    ├── BadRequestError            (also ValueError) malformed input a schema cannot catch
    ├── UnauthorizedError          no bearer token, or a wrong one
    ├── InsufficientScopeError     a read token on a request that needs the operator's
    ├── ForbiddenPathError         (also PermissionError) a path resolves outside its roots
    ├── ModelNotFoundError         (also LookupError) no resident model with that id
    ├── JobNotFoundError           (also LookupError) no job with that id
    ├── JobNotCancellableError     the job already runs or has finished
    ├── InsufficientMemoryError    (also MemoryError) the model cannot fit the budget
    ├── NotReadyError              the engine is not (or no longer) up
    │   ├── EngineStoppedError     the engine shut down before running a command
    │   └── MemoryWaitTimeoutError a load waited too long for memory that can become free
    └── HubError                   (also LookupError) the Hub endpoint has no such thing;
        │                          ``hub_code`` is the X-Error-Code huggingface_hub maps
        ├── RepoNotFoundError          no repository megaload/<id> (no such resident model)
        ├── RevisionNotFoundError      a revision other than main and the current commit
        └── EntryNotFoundError         no such file or folder in the repository
"""

from __future__ import annotations

__all__ = [
    "ServiceError",
    "BadRequestError",
    "UnauthorizedError",
    "InsufficientScopeError",
    "ForbiddenPathError",
    "ModelNotFoundError",
    "JobNotFoundError",
    "JobNotCancellableError",
    "InsufficientMemoryError",
    "NotReadyError",
    "EngineStoppedError",
    "MemoryWaitTimeoutError",
    "HubError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
]


class ServiceError(Exception):
    """Base class. ``field`` names the request field concerned, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class BadRequestError(ServiceError, ValueError):
    """Input that passed the schema but cannot be used (a NUL in a path, an over-long name)."""

    def __init__(self, message: str, *, field: str | None = None, limit: int | None = None) -> None:
        super().__init__(message, field=field)
        self.limit = limit


class UnauthorizedError(ServiceError):
    """A token is configured and the request has none or a wrong one."""


class InsufficientScopeError(ServiceError):
    """A valid token whose scope does not cover the request (a read token on a write)."""

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class ForbiddenPathError(ServiceError, PermissionError):
    """A path that resolves (symlinks included) outside the configured roots."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None) -> None:
        super().__init__(message, field=field)
        self.path = path


class ModelNotFoundError(ServiceError, LookupError):
    """No resident model has this id (never loaded, evicted, or being evicted)."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"no resident model with id {model_id!r}")
        self.model_id = model_id


class JobNotFoundError(ServiceError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class JobNotCancellableError(ServiceError):
    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id!r} is {state}; only queued jobs can be cancelled")
        self.job_id = job_id
        self.state = state


class InsufficientMemoryError(ServiceError, MemoryError):
    """The model needs more bytes than the budget can give even after evicting what it may."""

    def __init__(self, message: str, *, bytes_needed: int, bytes_available: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.bytes_needed = bytes_needed
        self.bytes_available = bytes_available
        self.budget_bytes = budget_bytes


class NotReadyError(ServiceError):
    """The distributed context is not up yet (or the engine failed or is stopping)."""

    def __init__(self, message: str, *, retry_after: int | None = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineStoppedError(NotReadyError):
    """A command was refused or cancelled because the engine is shutting down."""

    def __init__(self, message: str = "the engine is shutting down") -> None:
        super().__init__(message, retry_after=None)


class MemoryWaitTimeoutError(NotReadyError):
    """A load that would fit once other loads finish or models are evicted did not get its
    memory within the registry's wait (503 with Retry-After: try again later)."""


class HubError(ServiceError, LookupError):
    """A miss on the Hugging Face Hub endpoint. ``hub_code`` is the ``X-Error-Code`` value
    ``huggingface_hub`` turns into its own error class; ``commit`` (when known) is sent as
    ``X-Repo-Commit``, which it uses to remember that a file does not exist."""

    hub_code = ""

    def __init__(self, message: str, *, repo_id: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.commit = commit


class RepoNotFoundError(HubError):
    hub_code = "RepoNotFound"


class RevisionNotFoundError(HubError):
    hub_code = "RevisionNotFound"


class EntryNotFoundError(HubError):
    hub_code = "EntryNotFound"

    def __init__(self, message: str, *, repo_id: str, commit: str | None = None, path: str | None = None) -> None:
        super().__init__(message, repo_id=repo_id, commit=commit)
        self.path = path
