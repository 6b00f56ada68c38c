"""HTTP byte ranges (RFC 9110 section 14) for one shard file.

:func:`parse_range` reads a ``Range`` header against the file size. Supported: one
``bytes=first-last``, ``bytes=first-`` or ``bytes=-suffix``. The choice for everything else
follows the RFC's permission to ignore ``Range``: a header that is absent, malformed, in
another unit, or asks for several ranges gives ``None``, meaning "send the whole file with
200" (multipart/byteranges is not produced). A well-formed single range that cannot be
satisfied (it starts at or after the end, a zero-length suffix, an empty file) raises
:class:`RangeNotSatisfiableError` (answer 416 with ``Content-Range: bytes */size``, see
:func:`unsatisfied_content_range`).
"""

from __future__ import annotations

import re

from ._errors import RangeNotSatisfiableError

__all__ = ["parse_range", "content_range", "unsatisfied_content_range"]

_SPEC = re.compile(r"(\d*)-(\d*)")
_HUGE = 1 << 64  # stands in for positions with more digits than any file size has
_MAX_HEADER = 4096


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)``, end exclusive, for a single satisfiable range; ``None`` to ignore the
    header and send everything; :class:`RangeNotSatisfiableError` for an unsatisfiable one."""
    if header is None or len(header) > _MAX_HEADER:
        return None
    unit, sep, spec_list = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec_list.split(",") if s.strip()]
    if len(specs) != 1:
        return None
    match = _SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        suffix = _position(last_text)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - suffix), size
    first = _position(first_text)
    last = _position(last_text) if last_text else None
    if last is not None and last < first:
        return None  # invalid, not unsatisfiable: RFC 9110 says to ignore it
    if first >= size:
        raise _unsatisfiable(header, size)
    end = size if last is None else min(last, size - 1) + 1
    return first, end


def content_range(start: int, end: int, size: int) -> str:
    """The ``Content-Range`` value of a 206 answer for ``[start, end)`` (end exclusive)."""
    return f"bytes {start}-{end - 1}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """The ``Content-Range`` value of a 416 answer."""
    return f"bytes */{size}"


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= 19 else _HUGE


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(
        f"Range {header!r} cannot be satisfied by a shard file of {size} bytes", range_header=header, size=size
    )
