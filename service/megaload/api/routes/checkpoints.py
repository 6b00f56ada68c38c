"""``/v1/checkpoints``: read a checkpoint's config, tensor metadata and tokenizer without
loading a model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from megaload_client import problems as p
from megaload_client.types import (
    MAX_PATH_CHARS,
    PATH_PATTERN,
    CheckpointConfig,
    CheckpointTensors,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)

from ...runtime import Runtime
from ..deps import READ_ONLY, RuntimeDep
from ..problems import error_responses

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])

PathQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        description="a save directory or iteration directory inside a checkpoint root (or relative to the first); "
        "no NUL byte, at most 255 bytes per component (else 400)",
        json_schema_extra={"pattern": PATH_PATTERN},
    ),
]

CHECKPOINT_PATH_ERRORS = (
    p.VALIDATION,
    p.BAD_REQUEST,
    p.UNAUTHORIZED,
    p.FORBIDDEN_PATH,
    p.CHECKPOINT_NOT_FOUND,
    p.NOT_A_CHECKPOINT,
    p.UNSUPPORTED_CHECKPOINT,
    p.CORRUPT_CHECKPOINT,
    p.UNSAFE_CHECKPOINT,
)
"""What a route naming a checkpoint by path may answer (models.py's load too)."""
_PATH_ERRORS = (*CHECKPOINT_PATH_ERRORS, p.NOT_READY)


def _read_route(
    route: str, model: type, summary: str, read: Callable[[Runtime, str], Awaitable[Any]], *errors: str
) -> None:
    """``GET /v1/checkpoints/<route>?path=...``: ``read(runtime, path)``, answered as ``model``.
    The endpoint's name (``get_<route>``) makes its operationId."""

    async def endpoint(path: PathQuery, runtime: RuntimeDep) -> Any:
        return await read(runtime, path)

    endpoint.__name__ = endpoint.__qualname__ = f"get_{route}"
    router.get(f"/{route}", response_model=model, summary=summary, responses=error_responses(*_PATH_ERRORS, *errors))(
        endpoint
    )


_read_route(
    "config", CheckpointConfig, "The checkpoint's model config (no model is built)", Runtime.checkpoint_config,
    p.INCOMPATIBLE_CONFIG,
)  # fmt: skip
_read_route(
    "tensors", CheckpointTensors,
    "Stored tensor names, global shapes and dtypes (no weights read), and the keys each streams as once loaded",
    Runtime.checkpoint_tensors,
)  # fmt: skip
_read_route(
    "tokenizer", TokenizerInfo, "The checkpoint's tokenizer: type, vocabulary size, special ids", Runtime.tokenizer_info,
    p.TOKENIZER_ERROR,
)  # fmt: skip


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    summary="Token ids of a text with the checkpoint's tokenizer (and the text decoded back)",
    responses=error_responses(*_PATH_ERRORS, p.TOKENIZER_ERROR, p.PAYLOAD_TOO_LARGE),
    openapi_extra=READ_ONLY,  # changes nothing: read tokens may call it
)
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep) -> TokenizeResponse:
    return await runtime.tokenize(body)
