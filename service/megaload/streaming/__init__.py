"""State dicts as safetensors shards: plans, framing and zero-copy bytes.

Two halves, as in PyTorch DCP: the *planner* decides what moves (which tensors, in which
shard file, at which offsets, with which header) from names, shapes and dtypes alone; the
*writer* produces a shard's bytes from the tensors' own memory. Nothing here knows HTTP
frameworks, registries or Megatron; the HTTP layer calls these functions in this order.

Index (``GET .../state_dict``)::

    options = ShardOptions(max_shard_bytes=..., dtype=torch.bfloat16 | None, keys=[...])
        # validates: InvalidShardOptionsError (422/400), InvalidKeyPatternError (400)
    plan = plan_shards(state_dict, options)     # no tensor data read; cache per (model, options)
        # KeysNotFoundError (404) when a keys filter matches no name
    plan = fill_checksums(plan, state_dict)     # reads every tensor once; cache the result
    body = plan.to_dict()                       # or plan.hf_index() for the bare HF index

Shard (``GET``/``HEAD .../state_dict/{n}``)::

    shard = plan.shard(n)                       # ShardNotFoundError (404)
    etag = shard_etag(model_identity, plan, n)
    if matches_if_none_match(request If-None-Match, etag): answer 304
    span = parse_range(request Range, shard.size) if matches_if_range(request If-Range, etag) else None
        # RangeNotSatisfiableError (416, Content-Range: unsatisfied_content_range(shard.size))
    start, end = span or (0, shard.size)        # 206 + content_range(start, end, shard.size) when span
    body = iter_shard_bytes(plan, n, state_dict, start=start, end=end)
        # PlanMismatchError raised here, before any byte; then iterate (a sync generator:
        # Starlette runs it in a thread) and close() it when the client goes away

Headers, sizes and ETags come from the plan alone, so HEAD and ``Content-Length`` never read
tensor data. Pieces yielded are ``memoryview`` objects of at most ``chunk_bytes`` that stay
valid after the next one is produced.
"""

from . import _errors
from ._checksums import compute_checksums, fill_checksums
from ._dtypes import SAFETENSORS_DTYPE_NAMES, safetensors_dtype_name
from ._errors import *  # noqa: F403 (its __all__, re-exported below)
from ._etags import ETAG_FORMAT_VERSION, matches_if_none_match, matches_if_range, shard_etag
from ._header import encode_header
from ._lazy import LazyTensors
from ._options import (
    DEFAULT_MAX_SHARD_BYTES,
    MAX_KEY_PATTERN_LENGTH,
    MAX_KEY_PATTERNS,
    MAX_MAX_SHARD_BYTES,
    MIN_MAX_SHARD_BYTES,
    ShardOptions,
)
from ._plan import (
    CHECKSUM_ALGORITHM,
    Shard,
    ShardPlan,
    SkippedEntry,
    TensorEntry,
    TensorSpec,
    plan_shards,
    shard_filename,
)
from ._ranges import content_range, parse_range, unsatisfied_content_range
from ._writer import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, iter_shard_bytes

__all__ = [
    # planner
    "ShardOptions",
    "plan_shards",
    "ShardPlan",
    "Shard",
    "TensorEntry",
    "TensorSpec",
    "SkippedEntry",
    "shard_filename",
    "DEFAULT_MAX_SHARD_BYTES",
    "MIN_MAX_SHARD_BYTES",
    "MAX_MAX_SHARD_BYTES",
    "MAX_KEY_PATTERNS",
    "MAX_KEY_PATTERN_LENGTH",
    # framing
    "encode_header",
    "SAFETENSORS_DTYPE_NAMES",
    "safetensors_dtype_name",
    # writer
    "LazyTensors",
    "iter_shard_bytes",
    "DEFAULT_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    # integrity
    "compute_checksums",
    "fill_checksums",
    "CHECKSUM_ALGORITHM",
    # HTTP helpers
    "parse_range",
    "content_range",
    "unsatisfied_content_range",
    "shard_etag",
    "matches_if_none_match",
    "matches_if_range",
    "ETAG_FORMAT_VERSION",
    # errors
    *_errors.__all__,
]
