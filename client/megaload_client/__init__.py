"""Client SDK for the megaload service. Installs with httpx and pydantic only.

    from megaload_client import Client

    with Client("http://127.0.0.1:8000") as client:        # token: argument or $MEGALOAD_TOKEN
        model = client.load("/checkpoints/gpt/iter_0000100")
        tensors = model.state_dict()                       # needs torch
        model.download("out/")                             # sharded safetensors + index

Importing this package never imports torch; the calls that return tensors import it.
"""

from ._async_client import AsyncClient
from ._base_client import DEFAULT_LOAD_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._checksums import checksums_available
from ._client import Client
from ._download import INDEX_FILENAME, DownloadResult
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    ConflictError,
    CorruptCheckpointError,
    IncompatibleConfigError,
    InsufficientMemoryError,
    IntegrityError,
    InternalServerError,
    InvalidDtypeError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobNotCancellableError,
    JobNotFoundError,
    JobTimeoutError,
    MegaloadError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotACheckpointError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RangeNotSatisfiableError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    ShardNotFoundError,
    TokenizerError,
    UnprocessableEntityError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    UnmappableModelError,
)
from ._handles import AsyncJobHandle, AsyncModelHandle, JobHandle, ModelHandle
from ._models import (
    CheckpointConfig,
    CheckpointTensors,
    Health,
    Info,
    Job,
    JobKind,
    JobList,
    JobState,
    ModelInfo,
    ModelList,
    ModelParallelOverrides,
    ProblemDetail,
    Readiness,
    ShardInfo,
    StateDictIndex,
    StateDictTensor,
    TokenizeResponse,
    TokenizerInfo,
)
from ._retry import RetryPolicy
from ._version import __version__

__all__ = [
    "__version__",
    # clients and handles
    "Client",
    "AsyncClient",
    "ModelHandle",
    "AsyncModelHandle",
    "JobHandle",
    "AsyncJobHandle",
    "DownloadResult",
    "RetryPolicy",
    "INDEX_FILENAME",
    "DEFAULT_TIMEOUT",
    "DEFAULT_LOAD_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "checksums_available",
    # wire models
    "CheckpointConfig",
    "CheckpointTensors",
    "Health",
    "Info",
    "Job",
    "JobKind",
    "JobList",
    "JobState",
    "ModelInfo",
    "ModelList",
    "ModelParallelOverrides",
    "ProblemDetail",
    "Readiness",
    "ShardInfo",
    "StateDictIndex",
    "StateDictTensor",
    "TokenizeResponse",
    "TokenizerInfo",
    # errors
    "MegaloadError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "CheckpointNotFoundError",
    "ModelNotFoundError",
    "ShardNotFoundError",
    "JobNotFoundError",
    "MethodNotAllowedError",
    "ConflictError",
    "CheckpointExistsError",
    "JobNotCancellableError",
    "PayloadTooLargeError",
    "RangeNotSatisfiableError",
    "UnprocessableEntityError",
    "NotACheckpointError",
    "UnsupportedCheckpointError",
    "UnmappableModelError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "IncompatibleConfigError",
    "InvalidDtypeError",
    "TokenizerError",
    "RateLimitError",
    "ServerError",
    "InternalServerError",
    "ServiceUnavailableError",
    "InsufficientMemoryError",
    "IntegrityError",
    "JobError",
    "JobFailedError",
    "JobCancelledError",
    "JobTimeoutError",
]
