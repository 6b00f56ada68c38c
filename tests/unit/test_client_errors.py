"""Problem documents from the service become typed client exceptions, in one place."""

from __future__ import annotations

import json

import httpx
import pytest

import megaload_client as mc
from megaload_client import problems as p
from megaload_client._exceptions import connection_error, make_status_error


def _problem_response(status: int, type_: str | None = None, detail: str | None = None, **extra) -> httpx.Response:
    body = {"title": "t", "status": status, **extra}
    if type_ is not None:
        body["type"] = type_
    if detail is not None:
        body["detail"] = detail
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json"},
        request=httpx.Request("GET", "http://x/v1/models/abc"),
    )


# Expected class per problem type, written out here rather than read from the mapping.
EXPECTED = {
    p.VALIDATION: mc.UnprocessableEntityError,
    p.BAD_REQUEST: mc.BadRequestError,
    p.UNAUTHORIZED: mc.AuthenticationError,
    p.FORBIDDEN_PATH: mc.PermissionDeniedError,
    p.INSUFFICIENT_SCOPE: mc.PermissionDeniedError,
    p.NOT_FOUND: mc.NotFoundError,
    p.CHECKPOINT_NOT_FOUND: mc.CheckpointNotFoundError,
    p.MODEL_NOT_FOUND: mc.ModelNotFoundError,
    p.SHARD_NOT_FOUND: mc.ShardNotFoundError,
    p.KEYS_NOT_FOUND: mc.KeysNotFoundError,
    p.JOB_NOT_FOUND: mc.JobNotFoundError,
    p.REPO_NOT_FOUND: mc.RepoNotFoundError,
    p.REVISION_NOT_FOUND: mc.RevisionNotFoundError,
    p.ENTRY_NOT_FOUND: mc.EntryNotFoundError,
    p.METHOD_NOT_ALLOWED: mc.MethodNotAllowedError,
    p.CHECKPOINT_EXISTS: mc.CheckpointExistsError,
    p.JOB_NOT_CANCELLABLE: mc.JobNotCancellableError,
    p.PAYLOAD_TOO_LARGE: mc.PayloadTooLargeError,
    p.RANGE_NOT_SATISFIABLE: mc.RangeNotSatisfiableError,
    p.NOT_A_CHECKPOINT: mc.NotACheckpointError,
    p.UNSUPPORTED_CHECKPOINT: mc.UnsupportedCheckpointError,
    p.UNMAPPABLE_MODEL: mc.UnmappableModelError,
    p.CORRUPT_CHECKPOINT: mc.CorruptCheckpointError,
    p.UNSAFE_CHECKPOINT: mc.UnsafeCheckpointError,
    p.INCOMPATIBLE_CONFIG: mc.IncompatibleConfigError,
    p.INVALID_DTYPE: mc.InvalidDtypeError,
    p.TOKENIZER_ERROR: mc.TokenizerError,
    p.NOT_READY: mc.ServiceUnavailableError,
    p.INSUFFICIENT_MEMORY: mc.InsufficientMemoryError,
    p.INTERNAL: mc.InternalServerError,
}


def test_every_published_problem_type_has_a_class():
    assert set(EXPECTED) == set(p.PROBLEM_STATUS)


@pytest.mark.parametrize("type_", sorted(EXPECTED))
def test_problem_type_selects_the_class_and_keeps_the_detail(type_):
    status = p.PROBLEM_STATUS[type_]
    error = make_status_error(_problem_response(status, type_, detail=f"about {type_}"))
    assert type(error) is EXPECTED[type_]
    assert isinstance(error, mc.APIStatusError) and isinstance(error, mc.MegaloadError)
    assert error.status_code == status
    assert error.type == type_
    assert f"about {type_}" in str(error)
    assert str(status) in str(error)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (mc.NotFoundError, LookupError),
        (mc.ModelNotFoundError, LookupError),
        (mc.KeysNotFoundError, LookupError),
        (mc.ChecksumUnavailableError, ImportError),
        (mc.CheckpointNotFoundError, FileNotFoundError),
        (mc.CheckpointExistsError, FileExistsError),
        (mc.PermissionDeniedError, PermissionError),
        (mc.AuthenticationError, PermissionError),
        (mc.BadRequestError, ValueError),
        (mc.UnprocessableEntityError, ValueError),
        (mc.InvalidDtypeError, ValueError),
        (mc.APIConnectionError, ConnectionError),
        (mc.APITimeoutError, TimeoutError),
        (mc.JobTimeoutError, TimeoutError),
        (mc.IntegrityError, ValueError),
    ],
)
def test_classes_inherit_the_natural_builtin(cls, builtin):
    assert issubclass(cls, builtin)


def test_builtin_except_clauses_catch_service_errors():
    with pytest.raises(LookupError):
        raise make_status_error(_problem_response(404, p.MODEL_NOT_FOUND, detail="no model 'x'"))
    with pytest.raises(FileExistsError):
        raise make_status_error(_problem_response(409, p.CHECKPOINT_EXISTS, detail="/save/a exists"))


@pytest.mark.parametrize(
    "status, cls",
    [(400, mc.BadRequestError), (404, mc.NotFoundError), (409, mc.ConflictError), (429, mc.RateLimitError),
     (503, mc.ServiceUnavailableError), (502, mc.ServerError), (418, mc.APIStatusError)],
)
def test_unknown_problem_type_falls_back_to_status(status, cls):
    error = make_status_error(_problem_response(status, "https://example.com/other", detail="d"))
    assert type(error) is cls


def test_problem_extensions_are_kept():
    error = make_status_error(
        _problem_response(507, p.INSUFFICIENT_MEMORY, detail="needs 10 GiB", bytes_needed=10, bytes_available=3)
    )
    assert error.problem.bytes_needed == 10 and error.problem.bytes_available == 3


def test_a_body_that_is_not_a_problem_still_gives_a_typed_error_with_its_text():
    response = httpx.Response(502, content=b"<html>Bad gateway</html>", request=httpx.Request("GET", "http://x/"))
    error = make_status_error(response)
    assert type(error) is mc.ServerError
    assert error.status_code == 502
    assert "Bad gateway" in str(error)


def test_an_empty_body_uses_the_reason_phrase():
    error = make_status_error(httpx.Response(404, request=httpx.Request("HEAD", "http://x/")))
    assert type(error) is mc.NotFoundError
    assert "Not Found" in str(error)


def test_an_unread_streamed_body_does_not_break_mapping():
    stream = httpx.ByteStream(b'{"title": "x", "status": 404}')
    response = httpx.Response(404, stream=stream, request=httpx.Request("GET", "http://x/"))
    assert type(make_status_error(response)) is mc.NotFoundError


def test_fastapi_style_validation_detail_list_is_kept_readable():
    body = {"detail": [{"loc": ["body", "path"], "msg": "field required", "type": "missing"}]}
    response = httpx.Response(422, json=body, request=httpx.Request("POST", "http://x/"))
    error = make_status_error(response)
    assert type(error) is mc.UnprocessableEntityError
    assert "field required" in str(error)


def test_request_id_comes_from_problem_or_header():
    response = _problem_response(404, p.JOB_NOT_FOUND, detail="d", request_id="r-1")
    assert make_status_error(response).request_id == "r-1"
    plain = httpx.Response(404, headers={"x-request-id": "r-2"}, request=httpx.Request("GET", "http://x/"))
    assert make_status_error(plain).request_id == "r-2"


def test_transport_errors_are_wrapped_with_builtin_bases():
    request = httpx.Request("GET", "http://127.0.0.1:1/v1/info")
    timeout = connection_error(httpx.ReadTimeout("read timed out", request=request), request)
    assert isinstance(timeout, mc.APITimeoutError) and isinstance(timeout, TimeoutError)
    refused = connection_error(httpx.ConnectError("connection refused", request=request), request)
    assert type(refused) is mc.APIConnectionError and isinstance(refused, ConnectionError)
    assert "connection refused" in str(refused) and "/v1/info" in str(refused)
