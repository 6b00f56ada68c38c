"""The one error -> problem mapping: every error class has a stable type and status."""

from __future__ import annotations

import inspect
import json

import megaload.checkpoint as library
import megaload.errors as service_errors
import megaload.streaming as streaming
from megaload.api.problems import PROBLEM_TYPES, exception_response, problem_for
from megaload_client import problems as p


def _error_classes(module):
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass) if issubclass(obj, Exception)
            and obj.__module__.startswith(("megaload.checkpoint", "megaload.errors", "megaload.streaming"))]


def test_every_error_class_is_mapped_to_a_known_type():
    for module in (library, service_errors, streaming):
        for cls in _error_classes(module):
            assert cls in PROBLEM_TYPES, cls
            assert PROBLEM_TYPES[cls] in p.PROBLEM_STATUS, cls


def test_problem_types_are_unique_urns_with_titles():
    names = [getattr(p, n) for n in p.__all__ if n.isupper() and n not in ("PROBLEM_TYPE_PREFIX",
                                                                             "PROBLEM_STATUS", "PROBLEM_TITLES")]
    assert len(names) == len(set(names))
    for type_ in names:
        assert type_.startswith("urn:megaload:problem:")
        assert type_ in p.PROBLEM_STATUS and p.PROBLEM_TITLES[type_]


def test_statuses_and_extensions():
    cases = [
        (library.CheckpointNotFoundError("no such checkpoint: /x", path="/x"), 404, p.CHECKPOINT_NOT_FOUND),
        (library.UnsafeCheckpointError("bad global", path="/x"), 422, p.UNSAFE_CHECKPOINT),
        (library.CorruptCheckpointError("truncated", path="/x"), 422, p.CORRUPT_CHECKPOINT),
        (library.IncompatibleConfigError("tp", field="mp_overrides.tp"), 422, p.INCOMPATIBLE_CONFIG),
        (library.UnmappableModelError("LayerNorm", field="normalization"), 422, p.UNMAPPABLE_MODEL),
        (library.CheckpointExistsError("exists", path="/x"), 409, p.CHECKPOINT_EXISTS),
        (service_errors.ModelNotFoundError("abc"), 404, p.MODEL_NOT_FOUND),
        (service_errors.JobNotCancellableError("j", "running"), 409, p.JOB_NOT_CANCELLABLE),
        (service_errors.BadRequestError("long", field="path", limit=255), 400, p.BAD_REQUEST),
        (service_errors.ForbiddenPathError("out", field="path", path="/etc"), 403, p.FORBIDDEN_PATH),
        (streaming.InvalidKeyPatternError("bad regex", pattern="("), 400, p.BAD_REQUEST),
        (streaming.ShardNotFoundError("no shard 9", index=9, shard_count=2), 404, p.SHARD_NOT_FOUND),
    ]
    for exc, status, type_ in cases:
        prob = problem_for(exc)
        assert (prob.status, prob.type) == (status, type_), exc
        assert prob.detail == str(exc)
    assert problem_for(cases[0][0]).path == "/x"
    assert problem_for(cases[3][0]).field == "mp_overrides.tp"
    assert problem_for(cases[8][0]).limit == 255
    assert problem_for(cases[4][0]).field == "normalization"


def test_memory_and_readiness_headers():
    exc = service_errors.InsufficientMemoryError("too big", bytes_needed=10, bytes_available=3, budget_bytes=5)
    body = json.loads(exception_response(exc).body)
    assert body["status"] == 507 and body["bytes_needed"] == 10 and body["bytes_available"] == 3
    r = exception_response(service_errors.NotReadyError("starting", retry_after=1))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in exception_response(service_errors.NotReadyError("failed", retry_after=None)).headers
    r = exception_response(service_errors.UnauthorizedError("no token"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = exception_response(streaming.RangeNotSatisfiableError("bad", range_header="bytes=9-", size=5))
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */5"


def test_unknown_errors_are_opaque_500s():
    body = json.loads(exception_response(KeyError("/secret/internal/path")).body)
    assert body["status"] == 500 and body["type"] == p.INTERNAL
    assert "secret" not in body["detail"]
