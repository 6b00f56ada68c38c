"""Entity tags for shard files, and the conditional headers that compare them.

A shard's ETag is strong: it hashes the model identity the caller gives, the plan's options,
the shard index and the shard's header bytes (names, dtypes, shapes, offsets), under a
format version. Tensor data is not hashed; the model identity must change whenever the data
can (for example, a registry id plus the time the model was loaded), and then so does the
ETag.
"""

from __future__ import annotations

import hashlib
import json
import re

from ._plan import ShardPlan

__all__ = ["shard_etag", "matches_if_none_match", "matches_if_range", "ETAG_FORMAT_VERSION"]

ETAG_FORMAT_VERSION = "megaload-safetensors-shard/1"
"""Bumped whenever the bytes produced for the same plan could change."""

_TAG = re.compile(r'(W/)?"([^"]*)"')
_SEPARATORS = re.compile(r"[ \t,]*")


def shard_etag(model_identity: str, plan: ShardPlan, shard_index: int) -> str:
    """The strong ETag (quoted, 32 hex digits) of shard ``shard_index`` of ``plan``.

    Raises :class:`ShardNotFoundError` for a shard the plan does not have.
    """
    shard = plan.shard(shard_index)
    digest = hashlib.sha256()
    options = json.dumps(plan.options.to_dict(), sort_keys=True, separators=(",", ":"))
    for part in (ETAG_FORMAT_VERSION, model_identity, options, str(shard.index)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
    digest.update(shard.header)
    return f'"{digest.hexdigest()[:32]}"'


def matches_if_none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` (weak comparison, ``*`` matches anything):
    a GET or HEAD then answers 304. ``None`` or a header with no valid tag never matches."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(opaque == wanted for _weak, opaque in _tags(header))


def matches_if_range(header: str | None, etag: str) -> bool:
    """Whether a ``Range`` may be honoured given ``If-Range``: true when the header is absent
    or is exactly the (strong) ``etag``. A weak tag or a date (we send no Last-Modified)
    does not match: the Range is then ignored and the whole file sent with 200."""
    if header is None:
        return True
    tags = _tags(header)
    return len(tags) == 1 and not tags[0][0] and tags[0][1] == _opaque(etag)


def _opaque(etag: str) -> str:
    tags = _tags(etag)
    return tags[0][1] if tags else etag


def _tags(header: str) -> list[tuple[bool, str]]:
    """(weak, opaque) of each entity tag in a comma-separated list; [] when malformed."""
    out: list[tuple[bool, str]] = []
    position = 0
    while True:
        position = _SEPARATORS.match(header, position).end()  # type: ignore[union-attr]
        if position >= len(header):
            return out
        match = _TAG.match(header, position)
        if match is None:
            return []
        position = match.end()
        if position < len(header) and header[position] not in " \t,":
            return []
        out.append((match.group(1) is not None, match.group(2)))
