"""``/v1/models/{id}/state_dict``: a resident model's weights as safetensors shards.

``GET .../state_dict`` answers the index (Hugging Face ``model.safetensors.index.json``
keys plus the shards, per-tensor checksums and the entries left out); ``GET`` and ``HEAD
.../state_dict/{n}`` answer shard ``n`` as a complete safetensors file. Both take the same
query (``max_shard_bytes``, ``dtype``, repeatable ``keys``, ``names``), so the index
describes exactly the files the shard route serves under the same query. ``names=hf``
serves the Hugging Face model the checkpoint corresponds to (HF names and layouts, see
:mod:`megaload.hf`); ``dtype`` and ``keys`` then apply to the HF tensors and names.

A shard request, in order (RFC 9110's precedence of conditional requests)::

    options from the query               422 (invalid-dtype, validation) / 400 (keys regex refused)
    lease on the model                   404 model-not-found
    names=hf: the model's HF view        422 unmappable-model (naming the field)
    plan (cached per model and options)  404 keys-not-found (a keys filter matching no key: the
                                         detail and key_prefixes list the model's prefixes),
                                         404 shard-not-found
    If-None-Match matches the ETag       304, no body
    HEAD                                 200, headers only (Range applies to GET only)
    Range (honoured when If-Range is absent or is the current ETag)
                                         206 + Content-Range, or 416 with Content-Range: bytes */size
    body                                 the writer's pieces, from a worker thread, lease held
                                         until the last byte or the client's disconnect

Headers, sizes and the ETag follow from the plan alone: nothing reads tensor data before the
body starts. The ETag hashes the model's id and load time, the options and the shard's
header, so it changes when the model is reloaded or the options change.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import StringConstraints

from megaload_client import problems as p
from megaload_client.types import DtypeName, StateDictIndex

from ... import streaming
from ...checkpoint import parse_dtype
from ...errors import BadRequestError
from ...shard_plans import Reshard
from ..deps import RuntimeDep
from ..file_answers import add_get_and_head, file_answer
from ..problems import error_responses
from ..streaming_body import leased_stream

router = APIRouter(prefix="/models", tags=["state dict"])

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"

ModelId = Annotated[str, Path(min_length=1, max_length=128, description="a model id from POST /v1/models")]
ShardIndex = Annotated[int, Path(description="the shard's index, from 0 (the index lists them)")]


def shard_options(
    max_shard_bytes: Annotated[
        int | None,
        Query(
            ge=streaming.MIN_MAX_SHARD_BYTES,
            le=streaming.MAX_MAX_SHARD_BYTES,
            description=f"bound on the tensor bytes of one shard (default {streaming.DEFAULT_MAX_SHARD_BYTES}, "
            f"between {streaming.MIN_MAX_SHARD_BYTES} and {streaming.MAX_MAX_SHARD_BYTES}); a larger tensor gets a "
            "shard of its own",
        ),
    ] = None,
    dtype: Annotated[
        DtypeName | None,
        Query(description="cast floating-point tensors to this dtype on the fly (bf16, fp16, float32...)"),
    ] = None,
    keys: Annotated[
        list[Annotated[str, StringConstraints(max_length=streaming.MAX_KEY_PATTERN_LENGTH)]] | None,
        Query(
            max_length=streaming.MAX_KEY_PATTERNS,
            description="regular expressions matched at the start of each key (a plain prefix works); "
            "repeat to keep keys matching any of them. Run in time linear in the key (RE2: Python's re "
            "syntax without back-references or look-around, which are refused with 400)",
        ),
    ] = None,
) -> streaming.ShardOptions:
    """The query shared by the index and the shards, validated."""
    target = None if dtype is None else parse_dtype(dtype)
    return streaming.ShardOptions(
        max_shard_bytes=streaming.DEFAULT_MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes,
        dtype=target,
        keys=tuple(keys or ()),
    )


ShardOptionsDep = Annotated[streaming.ShardOptions, Depends(shard_options)]

MAX_TP_SIZE = 1024


def reshard_query(
    tp_rank: Annotated[
        int | None,
        Query(ge=0, lt=MAX_TP_SIZE, description="with tp_size: serve what this tensor-parallel rank holds"),
    ] = None,
    tp_size: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_TP_SIZE,
            description="with tp_rank: the tensor-parallel size of the engine pulling the weights; "
            "column-parallel tensors are split on dim 0 (fused QKV per query group, GLU fc1 per half), "
            "row-parallel weights on dim 1, vocabulary tensors on padded rows, others whole",
        ),
    ] = None,
) -> Reshard | None:
    """The resharding query: both parameters or neither."""
    if tp_rank is None and tp_size is None:
        return None
    if tp_rank is None or tp_size is None:
        missing = "tp_rank" if tp_rank is None else "tp_size"
        raise BadRequestError(f"{missing} is required together with {'tp_size' if missing == 'tp_rank' else 'tp_rank'}", field=missing)
    if tp_rank >= tp_size:
        raise BadRequestError(f"tp_rank={tp_rank} must be below tp_size={tp_size}", field="tp_rank")
    return Reshard(tp_rank=tp_rank, tp_size=tp_size)


ReshardDep = Annotated["Reshard | None", Depends(reshard_query)]

Names = Literal["megatron", "hf"]
NamesQuery = Annotated[
    Names,
    Query(
        description="megatron: the model's own tensors and names (default); hf: the Hugging Face model it "
        "corresponds to (HF names, split q/k/v and gate/up, no vocabulary padding), or 422 unmappable-model "
        "naming the field that no supported architecture expresses",
    ),
]


_OPTION_ERRORS = (
    p.VALIDATION, p.INVALID_DTYPE, p.BAD_REQUEST, p.UNAUTHORIZED, p.MODEL_NOT_FOUND, p.KEYS_NOT_FOUND, p.UNMAPPABLE_MODEL
)


@router.get(
    "/{model_id}/state_dict",
    response_model=StateDictIndex,
    summary="The shard index of a model's state dict (Hugging Face index keys, shards, checksums)",
    responses=error_responses(*_OPTION_ERRORS),
)
async def state_dict_index(
    model_id: ModelId,
    options: ShardOptionsDep,
    reshard: ReshardDep,
    runtime: RuntimeDep,
    names: NamesQuery = "megatron",
) -> Response:
    body = await runtime.state_dict_index(model_id, options, reshard, hf=names == "hf")
    return Response(body, media_type="application/json")


_SHARD_RESPONSES = {
    200: {"description": "the whole shard file", "content": {SAFETENSORS_MEDIA_TYPE: {}}},
    206: {"description": "the byte range asked for (Content-Range)", "content": {SAFETENSORS_MEDIA_TYPE: {}}},
    304: {"description": "If-None-Match matched the shard's ETag"},
    **error_responses(*_OPTION_ERRORS, p.SHARD_NOT_FOUND, p.RANGE_NOT_SATISFIABLE),
}


async def _shard(
    model_id: ModelId,
    n: ShardIndex,
    request: Request,
    options: ShardOptionsDep,
    reshard: ReshardDep,
    runtime: RuntimeDep,
    names: NamesQuery = "megatron",
) -> Response:
    # GET: shard n; HEAD: its headers (see the module docstring). No docstring: it would
    # become both operations' description in the OpenAPI document.
    lease = runtime.acquire(model_id)
    handed_over = False
    try:
        read = await runtime.state_dict_shard(lease.entry, n, options, reshard, hf=names == "hf")
        shard = read.shard
        answer = file_answer(request, etag=read.etag, size=shard.size, head=request.method == "HEAD")
        if answer.not_modified:
            return Response(status_code=304, headers=answer.headers)
        headers = {**answer.headers, "Content-Disposition": f'attachment; filename="{shard.filename}"'}
        if not answer.has_body:
            return Response(status_code=200, headers=headers, media_type=SAFETENSORS_MEDIA_TYPE)
        response = leased_stream(
            runtime,
            read.pieces(answer.start, answer.end),
            lease,
            status_code=answer.status,
            headers=headers,
            media_type=SAFETENSORS_MEDIA_TYPE,
            count_stalls=True,
        )
        handed_over = True
        return response
    finally:
        if not handed_over:
            lease.release()


add_get_and_head(
    router,
    "/{model_id}/state_dict/{n}",
    _shard,
    names=("get_shard", "head_shard"),
    summaries=(
        "Shard n as a complete safetensors file (ETag, Range, If-Range, If-None-Match)",
        "Headers of shard n (Content-Length, ETag) without the body",
    ),
    responses=_SHARD_RESPONSES,
)
