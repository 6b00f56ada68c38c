"""Wire models of the megaload HTTP API (v1): request and response bodies.

Shared by the service (which validates requests and serializes responses with them) and the
client SDK (which builds requests and parses responses). Imports only pydantic and the
standard library. Request models reject unknown fields (``extra="forbid"``) and carry the
limits the service enforces; response models ignore unknown fields so that an older client
keeps working against a newer service (fields are only ever added).

    ProblemDetail                 every error body (RFC 9457)
    Health, Readiness             /healthz, /readyz
    Info                          /v1/info
    CheckpointConfig              /v1/checkpoints/config
    CheckpointTensors             /v1/checkpoints/tensors
    TokenizerInfo                 /v1/checkpoints/tokenizer
    TokenizeRequest/Response      /v1/checkpoints/tokenize
    LoadModelRequest -> ModelInfo | Job      POST /v1/models
    ModelList, ModelInfo          /v1/models, /v1/models/{id}
    SaveModelRequest -> Job       POST /v1/models/{id}/save
    JobList, Job                  /v1/jobs, /v1/jobs/{id}
    StateDictIndex                /v1/models/{id}/state_dict
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_PATH_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_DTYPE_CHARS",
    "MAX_NAME_BYTES",
    "PATH_PATTERN",
    "DTYPE_NAMES",
    "CheckpointPath",
    "DtypeName",
    "ValidationErrorItem",
    "ProblemDetail",
    "Health",
    "Readiness",
    "VersionInfo",
    "MemoryInfo",
    "Info",
    "CheckpointFormatName",
    "CheckpointConfig",
    "TensorInfo",
    "CheckpointTensors",
    "TokenizerInfo",
    "TokenizeRequest",
    "TokenizeResponse",
    "ModelType",
    "ModelParallelOverrides",
    "LoadModelRequest",
    "ModelInfo",
    "ModelList",
    "CheckpointFormatOut",
    "SaveModelRequest",
    "JobKind",
    "JobState",
    "JobResult",
    "Job",
    "JobList",
    "ShardInfo",
    "StateDictTensor",
    "StateDictOptions",
    "StateDictIndexMetadata",
    "StateDictIndex",
]

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer paths are refused before touching the disk
MAX_TEXT_CHARS = 1_000_000  # tokenize input
MAX_DTYPE_CHARS = 32
MAX_NAME_BYTES = 255  # NAME_MAX: one component of a path
# What the service accepts as a path, for the schema (the service checks it itself and answers
# 400 naming the limit): no NUL byte, components of at most 255 characters (the service counts
# 255 bytes of UTF-8). An ECMA-262 pattern that Python's re reads the same way.
PATH_PATTERN = "^(?:[^\\x00/]{0,255}/)*[^\\x00/]{0,255}$"
# The dtype spellings the service accepts (lower-cased; it also ignores case and surrounding
# spaces): the keys of megaload.checkpoint.DTYPE_SPELLINGS, which a test keeps equal.
DTYPE_NAMES = (
    "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true", "bfloat16", "float16", "fp16",
    "fp16-mixed", "fp16-true", "half", "torch.bfloat16", "torch.float16",
    "32", "32-true", "float", "float32", "fp32", "fp32-true", "torch.float32",
)  # fmt: skip

CheckpointPath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PATH_CHARS),
    Field(json_schema_extra={"pattern": PATH_PATTERN}),
]
DtypeName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_DTYPE_CHARS), Field(json_schema_extra={"enum": list(DTYPE_NAMES)})
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# --------------------------------------------------------------------------- errors


class ValidationErrorItem(_Response):
    """One failed constraint of a request (``loc`` as pydantic reports it)."""

    loc: list[str | int] = Field(default_factory=list)
    msg: str
    type: str


class ProblemDetail(BaseModel):
    """An RFC 9457 problem: every error the service answers has this body.

    ``type`` is one of the URIs in :mod:`megaload_client.problems`. Extension members name
    what was wrong where it applies (``path``, ``field``, ``limit``, memory figures).
    """

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    path: str | None = Field(default=None, description="the file system path concerned")
    field: str | None = Field(default=None, description="the request or config field concerned")
    limit: int | None = Field(default=None, description="the limit that was exceeded")
    bytes_needed: int | None = Field(default=None, description="507: bytes the model needs")
    bytes_available: int | None = Field(default=None, description="507: bytes the budget can free")
    scope: str | None = Field(default=None, description="403 insufficient-scope: the scope the request needs")
    key_prefixes: list[str] | None = Field(
        default=None, description="404 keys-not-found: the distinct first two dotted components of the model's keys"
    )
    errors: list[ValidationErrorItem] | None = Field(default=None, description="422 validation: each failure")


# --------------------------------------------------------------------------- service


class Health(_Response):
    status: Literal["ok"] = "ok"


class Readiness(_Response):
    status: Literal["ready", "starting", "stopping", "failed"]
    detail: str | None = None


class VersionInfo(_Response):
    megaload: str
    python: str
    torch: str | None = None
    megatron_core: str | None = None


class MemoryInfo(_Response):
    budget_bytes: int = Field(description="bytes resident models may use in total")
    used_bytes: int = Field(description="bytes held by resident models")
    reserved_bytes: int = Field(0, description="bytes reserved by loads in progress")
    available_bytes: int = Field(description="budget minus used and reserved")
    evictable_bytes: int = Field(0, description="bytes held by unpinned models")


class Info(_Response):
    version: str
    versions: VersionInfo
    backend: str
    device: str
    world_size: int
    rank: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    ready: bool
    memory: MemoryInfo
    checkpoint_roots: list[str]
    save_roots: list[str]
    auth_required: bool
    models: int = Field(0, description="number of resident models")


# --------------------------------------------------------------------------- checkpoints

CheckpointFormatName = Literal["megatron_bridge", "megatron_lm", "hugging_face"]


class CheckpointConfig(_Response):
    """What ``load_model_config`` reads, without building a model."""

    path: str = Field(description="the path as requested")
    iteration_dir: str
    iteration: int | None = Field(description="None for a 'release' directory")
    format: CheckpointFormatName
    model_type: str | None = Field(default=None, description="'gpt', 'mamba', ... when known")
    config_type: str = Field(description="class name of the config object")
    config: dict[str, Any] = Field(description="config fields with JSON-representable values")
    mlm_args: dict[str, Any] | None = Field(default=None, description="Megatron-LM saved args, if any")


class TensorInfo(_Response):
    name: str = Field(description="the name stored in the checkpoint (see CheckpointTensors.naming)")
    shape: list[int]
    dtype: str = Field(description="torch dtype name without 'torch.', e.g. 'float32'")
    size_bytes: int
    stream_key: str | None = Field(
        default=None,
        description="the keys this tensor streams as once loaded (GET /v1/models/{id}/state_dict): a template "
        "whose '{layer}' and '{expert}' index the leading dimensions of a stacked tensor, e.g. "
        "'model.decoder.layers.{layer}.pre_mlp_layernorm.weight'; null where they do not follow from the name",
    )


class CheckpointTensors(_Response):
    """Tensor names, global shapes and dtypes from the checkpoint's metadata (no weights read)."""

    path: str
    iteration_dir: str
    naming: str = Field(
        default="", description="how the stored names and shapes relate to the keys a loaded model streams"
    )
    tensors: list[TensorInfo]
    tensor_count: int
    total_bytes: int


class TokenizerInfo(_Response):
    path: str
    iteration_dir: str
    tokenizer_type: str = Field(description="Megatron tokenizer type, e.g. HuggingFaceTokenizer, NullTokenizer")
    vocab_size: int | None = None
    eod: int | None = None
    bos: int | None = None
    eos: int | None = None
    pad: int | None = None
    special_ids: dict[str, int] = Field(
        default_factory=dict, description="every special token the tokenizer has (eod, bos, eos, pad, unk, ...)"
    )


class TokenizeRequest(_Request):
    path: CheckpointPath
    text: str = Field(max_length=MAX_TEXT_CHARS)
    detokenize: bool = Field(True, description="also decode the ids back to text")


class TokenizeResponse(_Response):
    ids: list[int]
    count: int
    detokenized: str | None = None


# --------------------------------------------------------------------------- models

ModelType = Literal["gpt", "mamba"]


class ModelParallelOverrides(_Request):
    """Model-parallel settings applied to the loaded config (only those given)."""

    tensor_model_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    pipeline_model_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    context_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    expert_model_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    expert_tensor_parallel_size: int | None = Field(default=None, ge=1, le=1024)
    sequence_parallel: bool | None = None


class LoadModelRequest(_Request):
    checkpoint_path: CheckpointPath = Field(
        description="a save directory or an iteration directory, absolute inside a checkpoint root or "
        "relative to the first root"
    )
    model_type: ModelType | None = Field(default=None, description="needed for Megatron-LM checkpoints")
    dtype: DtypeName | None = Field(default=None, description="cast parameters to this dtype after loading")
    mp_overrides: ModelParallelOverrides | None = None
    pin: bool = Field(False, description="never evict this model to make room")
    wait: bool = Field(True, description="false: answer 202 with a load job at once")


class ModelInfo(_Response):
    id: str
    checkpoint_path: str = Field(description="the path as first requested")
    iteration_dir: str = Field(description="the resolved iteration directory")
    iteration: int | None
    format: CheckpointFormatName
    model_type: str | None = None
    dtype: str
    parameter_count: int
    size_bytes: int
    pinned: bool
    mp_overrides: dict[str, Any] | None = None
    loaded_at: datetime
    last_used_at: datetime
    load_seconds: float
    active_leases: int = Field(0, description="streams currently reading this model")


class ModelList(_Response):
    models: list[ModelInfo]
    memory: MemoryInfo


CheckpointFormatOut = Literal["torch_dist"]


class SaveModelRequest(_Request):
    path: CheckpointPath = Field(
        description="destination save directory, absolute inside a save root or relative to the first"
    )
    ckpt_format: CheckpointFormatOut = "torch_dist"
    hf_tokenizer_path: CheckpointPath | None = Field(
        default=None, description="a tokenizer directory (inside a checkpoint root) to bundle"
    )
    overwrite: bool = Field(False, description="replace a checkpoint already at path")


# --------------------------------------------------------------------------- jobs


class JobKind(str, enum.Enum):
    LOAD = "load"
    SAVE = "save"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobResult(_Response):
    model: ModelInfo | None = Field(default=None, description="load: the resident model")
    model_id: str | None = None
    path: str | None = Field(default=None, description="save: the checkpoint written")
    created: bool | None = Field(default=None, description="load: false if it was already resident")


class Job(_Response):
    id: str
    kind: JobKind
    state: JobState
    progress: float = Field(ge=0.0, le=1.0)
    phase: str | None = Field(default=None, description="what the job is doing now")
    bytes_read: int | None = Field(
        default=None, ge=0, description="a load reading its checkpoint: tensor bytes read so far"
    )
    bytes_to_read: int | None = Field(default=None, ge=0, description="a load: tensor bytes it reads in all")
    model_id: str | None = None
    target: str | None = Field(default=None, description="checkpoint read (load) or written (save)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: ProblemDetail | None = None


class JobList(_Response):
    jobs: list[Job]


# --------------------------------------------------------------------------- state dict


class ShardInfo(_Response):
    index: int
    filename: str
    size: int = Field(description="bytes of the whole safetensors file, header included")
    tensor_count: int
    names: list[str] = Field(default_factory=list, description="the tensor keys in this file, in state-dict order")


class StateDictTensor(_Response):
    """What the shards hold for one tensor, so a client can check its destination first."""

    dtype: str = Field(description="safetensors name of the dtype on the wire (after any cast), as in the header")
    shape: list[int]
    shard: int = Field(description="index of the shard that holds it")


class StateDictOptions(_Response):
    """The query an index was planned with (the same query serves its shards)."""

    max_shard_bytes: int
    dtype: str | None = Field(default=None, description="safetensors name of the cast target (BF16...), or null")
    keys: list[str] = Field(default_factory=list)


class StateDictIndexMetadata(_Response):
    total_size: int


class StateDictIndex(_Response):
    """Hugging Face ``model.safetensors.index.json`` shape plus the shard list."""

    metadata: StateDictIndexMetadata
    total_size: int = Field(description="tensor bytes, as in Hugging Face's index")
    shards: list[ShardInfo]
    weight_map: dict[str, str] = Field(description="tensor key -> shard filename")
    tensors: dict[str, StateDictTensor] = Field(
        default_factory=dict,
        description="tensor key -> dtype, shape and shard, as in the shard headers (empty from older servers)",
    )
    checksum_algorithm: str = Field("xxh3_64", description="algorithm of `checksums`")
    checksums: dict[str, str] = Field(
        default_factory=dict,
        description="tensor key -> hex digest (xxh3_64, as xxhash's hexdigest) of its bytes as streamed",
    )
    skipped: list[str] = Field(
        default_factory=list, description="state-dict entries that are not tensors (e.g. _extra_state), left out"
    )
    skipped_reasons: dict[str, str] = Field(default_factory=dict, description="skipped entry -> why it was left out")
    options: StateDictOptions | None = Field(default=None, description="the options the shards were planned with")
