"""Path policing on every route that takes a path: roots, '..', symlink escapes, NUL bytes,
over-long paths and names. Always a problem response, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megaload_client import problems


@pytest.fixture(scope="module")
def outside(tmp_path_factory, ckpt_root) -> Path:
    """A real checkpoint outside the roots, and symlinks inside the root pointing at it."""
    import shutil

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    out = tmp_path_factory.mktemp("outside") / "mlm"
    shutil.copytree(fixtures / "mlm_gpt" / "checkpoint", out)
    link = ckpt_root / "escape_link"
    if not link.exists():
        link.symlink_to(out, target_is_directory=True)
    nested = ckpt_root / "nested_escape"
    nested.mkdir(exist_ok=True)
    if not (nested / "up").exists():
        (nested / "up").symlink_to(out.parent, target_is_directory=True)
    # a save directory whose tracker names an iteration directory that is a symlink outside
    tracker_dir = ckpt_root / "tracker_escape"
    tracker_dir.mkdir(exist_ok=True)
    (tracker_dir / "latest_checkpointed_iteration.txt").write_text("10")
    if not (tracker_dir / "iter_0000010").exists():
        (tracker_dir / "iter_0000010").symlink_to(out / "iter_0000010", target_is_directory=True)
    return out


def _assert_problem(r, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == type_, body
    assert body["status"] == status and body["detail"]
    return body


def _all_path_requests(service, path: str):
    """The same path through each route that reads a checkpoint path."""
    c = service.client
    yield c.post("/v1/models", json={"checkpoint_path": path})
    yield c.get("/v1/checkpoints/config", params={"path": path})
    yield c.get("/v1/checkpoints/tensors", params={"path": path})
    yield c.get("/v1/checkpoints/tokenizer", params={"path": path})
    yield c.post("/v1/checkpoints/tokenize", json={"path": path, "text": "1 2"})


def test_absolute_path_outside_roots_is_403(service, outside):
    for r in _all_path_requests(service, str(outside)):
        body = _assert_problem(r, 403, problems.FORBIDDEN_PATH)
        assert body["path"] == str(outside)


def test_dotdot_is_403(service, outside):
    for path in ("../outside", "mlm_gpt/../../x", f"{service.ckpt_root}/../x", "mlm_gpt/.."):
        for r in _all_path_requests(service, path):
            _assert_problem(r, 403, problems.FORBIDDEN_PATH)


def test_symlink_escapes_are_403(service, outside):
    for path in ("escape_link", "nested_escape/up/mlm", "tracker_escape"):
        for r in _all_path_requests(service, path):
            _assert_problem(r, 403, problems.FORBIDDEN_PATH)


def test_nul_byte_is_400(service):
    for r in _all_path_requests(service, "mlm_gpt\x00/etc/passwd"):
        body = _assert_problem(r, 400, problems.BAD_REQUEST)
        assert "NUL" in body["detail"]


def test_undecodable_paths_are_refused(service):
    raw = b'{"checkpoint_path": "mlm_gpt\\ud800"}'  # a lone surrogate: not encodable text
    r = service.client.post("/v1/models", content=raw, headers={"content-type": "application/json"})
    _assert_problem(r, 422, problems.VALIDATION)
    r = service.client.get("/v1/checkpoints/config?path=mlm_gpt%ED%A0%80%FF")
    assert r.status_code in (403, 404), r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_over_long_path_is_refused(service):
    long_path = "a/" * 2500
    for r in _all_path_requests(service, long_path):
        body = _assert_problem(r, 422, problems.VALIDATION)
        assert body["errors"][0]["type"] == "string_too_long"
    long_name = "x" * 300
    for r in _all_path_requests(service, long_name):
        body = _assert_problem(r, 400, problems.BAD_REQUEST)
        assert body["limit"] == 255


def test_file_and_missing_paths(service):
    for r in _all_path_requests(service, "mlm_gpt/latest_checkpointed_iteration.txt"):
        _assert_problem(r, 422, problems.NOT_A_CHECKPOINT)
    for r in _all_path_requests(service, "no_such_dir"):
        _assert_problem(r, 404, problems.CHECKPOINT_NOT_FOUND)


def test_save_paths_are_policed(service, outside):
    model_id = service.load("mlm_gpt").json()["id"]
    c = service.client
    cases = [
        (str(outside.parent / "out"), 403, problems.FORBIDDEN_PATH),
        ("../escape", 403, problems.FORBIDDEN_PATH),
        (str(service.ckpt_root / "mlm_gpt_copy"), 403, problems.FORBIDDEN_PATH),  # read root, not a save root
        ("x\x00y", 400, problems.BAD_REQUEST),
        ("n" * 300, 400, problems.BAD_REQUEST),
        (str(service.save_root), 400, problems.BAD_REQUEST),  # the save root itself
    ]
    for path, status, type_ in cases:
        r = c.post(f"/v1/models/{model_id}/save", json={"path": path})
        _assert_problem(r, status, type_)
    link = service.save_root / "link_out"
    if not link.exists():
        link.symlink_to(outside.parent, target_is_directory=True)
    _assert_problem(c.post(f"/v1/models/{model_id}/save", json={"path": "link_out/new"}), 403, problems.FORBIDDEN_PATH)
    r = c.post(f"/v1/models/{model_id}/save", json={"path": "ok", "hf_tokenizer_path": str(outside)})
    body = _assert_problem(r, 403, problems.FORBIDDEN_PATH)
    assert body["field"] == "hf_tokenizer_path"
    assert not (outside.parent / "out").exists()
    assert not os.path.exists(outside.parent / "new")
