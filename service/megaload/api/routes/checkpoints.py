"""``/v1/checkpoints``: read a checkpoint's config, tensor metadata and tokenizer without
loading a model."""

from __future__ import annotations

from typing import Annotated

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


@router.get(
    "/config",
    response_model=CheckpointConfig,
    summary="The checkpoint's model config (no model is built)",
    responses=error_responses(*_PATH_ERRORS, p.INCOMPATIBLE_CONFIG),
)
async def get_config(path: PathQuery, runtime: RuntimeDep) -> CheckpointConfig:
    return await runtime.checkpoint_config(path)


@router.get(
    "/tensors",
    response_model=CheckpointTensors,
    summary="Stored tensor names, global shapes and dtypes (no weights read), and the keys each streams as once loaded",
    responses=error_responses(*_PATH_ERRORS),
)
async def get_tensors(path: PathQuery, runtime: RuntimeDep) -> CheckpointTensors:
    return await runtime.checkpoint_tensors(path)


@router.get(
    "/tokenizer",
    response_model=TokenizerInfo,
    summary="The checkpoint's tokenizer: type, vocabulary size, special ids",
    responses=error_responses(*_PATH_ERRORS, p.TOKENIZER_ERROR),
)
async def get_tokenizer(path: PathQuery, runtime: RuntimeDep) -> TokenizerInfo:
    return await runtime.tokenizer_info(path)


@router.post(
    "/tokenize",
    response_model=TokenizeResponse,
    summary="Token ids of a text with the checkpoint's tokenizer (and the text decoded back)",
    responses=error_responses(*_PATH_ERRORS, p.TOKENIZER_ERROR, p.PAYLOAD_TOO_LARGE),
    openapi_extra=READ_ONLY,  # changes nothing: read tokens may call it
)
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep) -> TokenizeResponse:
    return await runtime.tokenize(body)
