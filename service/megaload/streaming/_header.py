"""The safetensors header: the bytes a shard file starts with.

A safetensors file is::

    [8 bytes: N, little-endian unsigned]  [N bytes: JSON header]  [data]

The JSON object maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``,
offsets counted from the start of the data section; the optional ``"__metadata__"`` entry is a
string-to-string map. Data ranges are contiguous and cover the data section without holes.
The JSON text is padded with spaces so that ``8 + N`` is a multiple of 8, which keeps the data
section aligned. The JSON is compact (no spaces between tokens) and UTF-8, as the safetensors
library writes it, so a file whose tensors are laid out in the library's order comes out byte
for byte the same.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping

__all__ = ["HeaderEntry", "encode_header", "HEADER_METADATA", "RESERVED_NAME"]

HEADER_METADATA: Mapping[str, str] = {"format": "pt"}
"""What ``__metadata__`` holds in every shard (``transformers`` checks ``format == "pt"``)."""

RESERVED_NAME = "__metadata__"
"""The one key of the JSON header that cannot be a tensor name."""

HeaderEntry = tuple[str, str, tuple[int, ...], int, int]
"""(name, safetensors dtype name, shape, data begin, data end), in data order."""


def encode_header(entries: Iterable[HeaderEntry], metadata: Mapping[str, str] | None = HEADER_METADATA) -> bytes:
    """The length prefix, JSON header and padding for ``entries``, laid out in the given order.

    The caller guarantees names are unique, not ``"__metadata__"``, and encodable as UTF-8,
    and that the offsets are contiguous from 0.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header[RESERVED_NAME] = dict(metadata)
    for name, dtype, shape, begin, end in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
