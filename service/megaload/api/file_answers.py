"""What to answer a GET or HEAD of a file whose size and ETag are known before its bytes.

Shard files (``/v1/models/{id}/state_dict/{n}``) and the files of the Hub endpoint
(``/hf/.../resolve/...``) answer conditional and range requests alike, in RFC 9110's order::

    If-None-Match matches the ETag       304, ETag and Accept-Ranges only, no body
    HEAD                                 200 with Content-Length (Range applies to GET only)
    Range (honoured when If-Range is absent or is the current ETag)
                                         206 + Content-Range, or RangeNotSatisfiableError (416)
    otherwise                            200, the whole file

:func:`file_answer` decides; the caller adds its own headers and, when :attr:`FileAnswer.has_body`,
produces bytes ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Response
from starlette.requests import Request

from ..streaming import content_range, matches_if_none_match, matches_if_range, parse_range

__all__ = ["FileAnswer", "file_answer", "add_get_and_head"]


@dataclass(frozen=True)
class FileAnswer:
    """``status`` (200, 206 or 304), the byte span ``[start, end)`` to send and the headers
    that follow from the file alone (ETag, Accept-Ranges, Content-Length, Content-Range)."""

    status: int
    start: int
    end: int
    head: bool
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def has_body(self) -> bool:
        return not self.head and self.status != 304


def file_answer(request: Request, *, etag: str, size: int, head: bool) -> FileAnswer:
    """The answer to ``request`` for a file of ``size`` bytes whose current ETag is ``etag``.
    Raises :class:`~megaload.streaming.RangeNotSatisfiableError` for a Range past the end."""
    base = {"ETag": etag, "Accept-Ranges": "bytes"}
    if matches_if_none_match(request.headers.get("if-none-match"), etag):
        return FileAnswer(304, 0, 0, head, base)
    if head:
        return FileAnswer(200, 0, size, head, {**base, "Content-Length": str(size)})
    span = None
    if matches_if_range(request.headers.get("if-range"), etag):
        span = parse_range(request.headers.get("range"), size)
    if span is None:
        return FileAnswer(200, 0, size, head, {**base, "Content-Length": str(size)})
    start, end = span
    headers = {**base, "Content-Length": str(end - start), "Content-Range": content_range(start, end, size)}
    return FileAnswer(206, start, end, head, headers)


def add_get_and_head(
    router: APIRouter,
    path: str,
    endpoint: Callable[..., Any],
    *,
    names: tuple[str, str],
    summaries: tuple[str, str],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """Route GET and HEAD of ``path`` to one ``endpoint`` (it tells them apart by
    ``request.method``), as two operations named and summarized each its own way."""
    for method, name, summary in zip(("GET", "HEAD"), names, summaries, strict=True):
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=name,
            response_class=Response,
            summary=summary,
            responses=responses,
        )
