"""Stable problem types (RFC 9457 ``type`` members) of the megaload HTTP API.

Every error response of the service is ``application/problem+json`` whose ``type`` is one of
the URIs below. They never change once published; clients branch on them (or on the HTTP
status) instead of parsing ``detail``. :data:`PROBLEM_STATUS` gives the status each type is
served with and :data:`PROBLEM_TITLES` its fixed human title.

Imports only the standard library.
"""

from __future__ import annotations

__all__ = [
    "PROBLEM_TYPE_PREFIX",
    "VALIDATION",
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN_PATH",
    "INSUFFICIENT_SCOPE",
    "NOT_FOUND",
    "CHECKPOINT_NOT_FOUND",
    "MODEL_NOT_FOUND",
    "SHARD_NOT_FOUND",
    "KEYS_NOT_FOUND",
    "JOB_NOT_FOUND",
    "REPO_NOT_FOUND",
    "REVISION_NOT_FOUND",
    "ENTRY_NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CHECKPOINT_EXISTS",
    "JOB_NOT_CANCELLABLE",
    "PAYLOAD_TOO_LARGE",
    "RANGE_NOT_SATISFIABLE",
    "NOT_A_CHECKPOINT",
    "UNSUPPORTED_CHECKPOINT",
    "UNMAPPABLE_MODEL",
    "CORRUPT_CHECKPOINT",
    "UNSAFE_CHECKPOINT",
    "INCOMPATIBLE_CONFIG",
    "INVALID_DTYPE",
    "TOKENIZER_ERROR",
    "NOT_READY",
    "INSUFFICIENT_MEMORY",
    "INTERNAL",
    "PROBLEM_STATUS",
    "PROBLEM_TITLES",
]

PROBLEM_TYPE_PREFIX = "urn:megaload:problem:"

# 400
VALIDATION = PROBLEM_TYPE_PREFIX + "validation"  # 422: the request body or query fails its schema
BAD_REQUEST = PROBLEM_TYPE_PREFIX + "bad-request"  # malformed input the schema cannot catch
# 401 / 403
UNAUTHORIZED = PROBLEM_TYPE_PREFIX + "unauthorized"
FORBIDDEN_PATH = PROBLEM_TYPE_PREFIX + "forbidden-path"
INSUFFICIENT_SCOPE = PROBLEM_TYPE_PREFIX + "insufficient-scope"  # a read token on a request that writes
# 404
NOT_FOUND = PROBLEM_TYPE_PREFIX + "not-found"  # no such route
CHECKPOINT_NOT_FOUND = PROBLEM_TYPE_PREFIX + "checkpoint-not-found"
MODEL_NOT_FOUND = PROBLEM_TYPE_PREFIX + "model-not-found"
SHARD_NOT_FOUND = PROBLEM_TYPE_PREFIX + "shard-not-found"
KEYS_NOT_FOUND = PROBLEM_TYPE_PREFIX + "keys-not-found"  # a ``keys`` filter matching no tensor; ``key_prefixes``
JOB_NOT_FOUND = PROBLEM_TYPE_PREFIX + "job-not-found"
# 404 on the Hugging Face Hub endpoint (with the X-Error-Code huggingface_hub maps)
REPO_NOT_FOUND = PROBLEM_TYPE_PREFIX + "repo-not-found"  # X-Error-Code: RepoNotFound
REVISION_NOT_FOUND = PROBLEM_TYPE_PREFIX + "revision-not-found"  # X-Error-Code: RevisionNotFound
ENTRY_NOT_FOUND = PROBLEM_TYPE_PREFIX + "entry-not-found"  # X-Error-Code: EntryNotFound
# 405
METHOD_NOT_ALLOWED = PROBLEM_TYPE_PREFIX + "method-not-allowed"
# 409
CHECKPOINT_EXISTS = PROBLEM_TYPE_PREFIX + "checkpoint-exists"
JOB_NOT_CANCELLABLE = PROBLEM_TYPE_PREFIX + "job-not-cancellable"
# 413
PAYLOAD_TOO_LARGE = PROBLEM_TYPE_PREFIX + "payload-too-large"
# 416
RANGE_NOT_SATISFIABLE = PROBLEM_TYPE_PREFIX + "range-not-satisfiable"
# 422: the checkpoint (not the request) is the problem
NOT_A_CHECKPOINT = PROBLEM_TYPE_PREFIX + "not-a-checkpoint"
UNSUPPORTED_CHECKPOINT = PROBLEM_TYPE_PREFIX + "unsupported-checkpoint"
UNMAPPABLE_MODEL = PROBLEM_TYPE_PREFIX + "unmappable-model"  # no Hugging Face form; ``field`` says why
CORRUPT_CHECKPOINT = PROBLEM_TYPE_PREFIX + "corrupt-checkpoint"
UNSAFE_CHECKPOINT = PROBLEM_TYPE_PREFIX + "unsafe-checkpoint"
INCOMPATIBLE_CONFIG = PROBLEM_TYPE_PREFIX + "incompatible-config"
INVALID_DTYPE = PROBLEM_TYPE_PREFIX + "invalid-dtype"
TOKENIZER_ERROR = PROBLEM_TYPE_PREFIX + "tokenizer-error"
# 5xx
NOT_READY = PROBLEM_TYPE_PREFIX + "not-ready"
INSUFFICIENT_MEMORY = PROBLEM_TYPE_PREFIX + "insufficient-memory"
INTERNAL = PROBLEM_TYPE_PREFIX + "internal"

PROBLEM_STATUS: dict[str, int] = {
    VALIDATION: 422,
    BAD_REQUEST: 400,
    UNAUTHORIZED: 401,
    FORBIDDEN_PATH: 403,
    INSUFFICIENT_SCOPE: 403,
    NOT_FOUND: 404,
    CHECKPOINT_NOT_FOUND: 404,
    MODEL_NOT_FOUND: 404,
    SHARD_NOT_FOUND: 404,
    KEYS_NOT_FOUND: 404,
    JOB_NOT_FOUND: 404,
    REPO_NOT_FOUND: 404,
    REVISION_NOT_FOUND: 404,
    ENTRY_NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    CHECKPOINT_EXISTS: 409,
    JOB_NOT_CANCELLABLE: 409,
    PAYLOAD_TOO_LARGE: 413,
    RANGE_NOT_SATISFIABLE: 416,
    NOT_A_CHECKPOINT: 422,
    UNSUPPORTED_CHECKPOINT: 422,
    UNMAPPABLE_MODEL: 422,
    CORRUPT_CHECKPOINT: 422,
    UNSAFE_CHECKPOINT: 422,
    INCOMPATIBLE_CONFIG: 422,
    INVALID_DTYPE: 422,
    TOKENIZER_ERROR: 422,
    NOT_READY: 503,
    INSUFFICIENT_MEMORY: 507,
    INTERNAL: 500,
}

PROBLEM_TITLES: dict[str, str] = {
    VALIDATION: "Request validation failed",
    BAD_REQUEST: "Malformed request",
    UNAUTHORIZED: "Missing or invalid bearer token",
    FORBIDDEN_PATH: "Path outside the allowed roots",
    INSUFFICIENT_SCOPE: "Token does not allow this request",
    NOT_FOUND: "No such resource",
    CHECKPOINT_NOT_FOUND: "Checkpoint not found",
    MODEL_NOT_FOUND: "Model not found",
    SHARD_NOT_FOUND: "Shard not found",
    KEYS_NOT_FOUND: "No key matches the keys filter",
    JOB_NOT_FOUND: "Job not found",
    REPO_NOT_FOUND: "Repository not found",
    REVISION_NOT_FOUND: "Revision not found",
    ENTRY_NOT_FOUND: "Entry not found",
    METHOD_NOT_ALLOWED: "Method not allowed",
    CHECKPOINT_EXISTS: "Checkpoint already exists",
    JOB_NOT_CANCELLABLE: "Job cannot be cancelled",
    PAYLOAD_TOO_LARGE: "Request body too large",
    RANGE_NOT_SATISFIABLE: "Range not satisfiable",
    NOT_A_CHECKPOINT: "Not a checkpoint",
    UNSUPPORTED_CHECKPOINT: "Unsupported checkpoint",
    UNMAPPABLE_MODEL: "No Hugging Face form for this model",
    CORRUPT_CHECKPOINT: "Corrupt checkpoint",
    UNSAFE_CHECKPOINT: "Unsafe checkpoint",
    INCOMPATIBLE_CONFIG: "Incompatible configuration",
    INVALID_DTYPE: "Invalid dtype",
    TOKENIZER_ERROR: "Tokenizer unavailable",
    NOT_READY: "Service not ready",
    INSUFFICIENT_MEMORY: "Insufficient memory",
    INTERNAL: "Internal server error",
}
