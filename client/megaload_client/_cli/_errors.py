"""How ``megaload-client`` reports an error: its exit status and its ``error`` document.

Every error :func:`~megaload_client._cli.main` catches becomes one document
``{"type", "status", "title", "detail"}`` (plus ``errors``, ``job`` and ``request_id`` when
known): printed as JSON on standard error under ``--json``, else as one line of text.
``type`` is the problem type URI of an error of the service, else a key of
:data:`ERROR_TYPES`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from .._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    IntegrityError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimeoutError,
    MegaloadError,
)
from ..types import ProblemDetail
from ._output import hint

__all__ = ["ERROR_TYPES", "EXIT_BROKEN_PIPE", "UsageError", "report"]

# ``error.type`` of errors that are not the service's problem documents.
ERROR_TYPES = {
    "usage": "the command line was wrong (exit status 2)",
    "invalid-argument": "a value the request refuses before it is sent (exit status 2)",
    "connection": "the service could not be reached, or the connection broke",
    "timeout": "the service took longer than --timeout",
    "integrity": "a downloaded tensor failed its size or checksum check",
    "job-cancelled": "the job waited for was cancelled",
    "job-timeout": "the job waited for did not end in time",
    "bad-response": "the answer could not be read (not a megaload service, or an incompatible version?)",
    "os-error": "a local file or directory could not be read or written",
    "interrupted": "Ctrl-C (exit status 130)",
    "internal": "a bug in megaload-client: please report it",
}
# Request models: a ValidationError of one of these is a bad argument, of anything else a bad answer.
# Request models: a ValidationError of one of these is a bad argument, of anything else a bad answer.
_REQUEST_MODELS = {"LoadModelRequest", "SaveModelRequest", "TokenizeRequest", "ModelParallelOverrides"}
# A request model's refusals in this command line's words (others keep the model's message).
_REASONS = {
    "extra_forbidden": "unknown setting",
}
_EXIT_USAGE, _EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141


class UsageError(Exception):
    """A command line this program refuses (exit status 2)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


def _error_document(error: BaseException) -> tuple[int, dict[str, Any]]:
    """(exit status, the ``error`` document) for anything ``main`` catches."""
    def doc(type_: str, detail: str | None, *, title: str | None = None, status: int | None = None,
            **extra: Any) -> dict[str, Any]:
        body = {"type": type_, "status": status, "title": title or ERROR_TYPES.get(type_, type_),
                "detail": detail}
        body.update({k: v for k, v in extra.items() if v is not None})
        return body

    def problem_doc(problem: ProblemDetail, **extra: Any) -> dict[str, Any]:
        return doc(problem.type, hint(problem.detail) if problem.detail else None, title=problem.title,
                   status=problem.status, **extra)

    if isinstance(error, UsageError):
        return _EXIT_USAGE, doc("usage", str(error), title="invalid command line")
    if isinstance(error, APIStatusError):
        errors = [{"loc": list(item.loc), "msg": item.msg} for item in error.problem.errors or []] or None
        return 1, problem_doc(error.problem, errors=errors, request_id=error.request_id)
    if isinstance(error, JobError):
        job = error.job
        if isinstance(error, JobFailedError) and job.error is not None:
            return 1, problem_doc(job.error, job=job.id)
        kind = "job-cancelled" if isinstance(error, JobCancelledError) else (
            "job-timeout" if isinstance(error, JobTimeoutError) else "job-failed")
        return 1, doc(kind, str(error), title=f"{job.kind.value} job {job.id} {job.state.value}", job=job.id)
    if isinstance(error, APITimeoutError):
        return 1, doc("timeout", str(error))
    if isinstance(error, APIConnectionError):
        return 1, doc("connection", str(error))
    if isinstance(error, IntegrityError):
        return 1, doc("integrity", str(error))
    if isinstance(error, MegaloadError):
        return 1, doc("internal", str(error), title="error")
    if isinstance(error, ValidationError):
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {_REASONS.get(e['type'], e['msg'])}"
            for e in error.errors(include_url=False)
        )
        if error.title in _REQUEST_MODELS:
            return _EXIT_USAGE, doc("invalid-argument", reasons, title="invalid argument")
        return 1, doc("bad-response", f"it is not a valid {error.title} (is --url a megaload service, of a "
                      "compatible version?)", title="the service's answer could not be read")
    if isinstance(error, ValueError):  # arguments the SDK refuses before sending
        return _EXIT_USAGE, doc("invalid-argument", str(error), title="invalid argument")
    if isinstance(error, OSError):  # e.g. the download directory cannot be written
        return 1, doc("os-error", str(error), title="local file error")
    if isinstance(error, KeyboardInterrupt):
        return _EXIT_INTERRUPTED, doc("interrupted", None, title="interrupted")
    return 1, doc("internal", f"{type(error).__name__}: {error}", title="internal error (please report)")


def _error_text(body: dict[str, Any]) -> str:
    if body["type"] == "usage":
        return f"error: {body['detail']}"
    if body["type"] == "interrupted":
        return "interrupted"
    if body["status"] is not None:
        text = f"error: {body['status']} {body['title']}"
    elif body["type"] in ("invalid-argument",):
        text = "invalid argument"
    elif body["type"] in ("connection", "timeout", "integrity", "os-error", "job-cancelled", "job-timeout"):
        text = "error"  # the detail says it all
    else:
        text = f"error: {body['title']}"
    if body.get("job"):
        text += f" (job {body['job']})"
    if body["detail"]:
        text += f": {body['detail']}"
    for item in body.get("errors") or []:
        where = ".".join(str(part) for part in item["loc"])
        text += f"\n  {where}: {item['msg']}"
    return text


def report(error: BaseException, as_json: bool) -> int:
    """Print ``error`` on standard error (as JSON under ``--json``); the exit status it calls for."""
    status, body = _error_document(error)
    if as_json:
        print(json.dumps({"error": body}), file=sys.stderr)
    else:
        if isinstance(error, UsageError) and error.parser is not None:
            print(error.parser.format_usage().rstrip(), file=sys.stderr)
        prog = error.parser.prog if isinstance(error, UsageError) and error.parser is not None else "megaload-client"
        print(f"{prog}: {_error_text(body)}", file=sys.stderr)
    return status

