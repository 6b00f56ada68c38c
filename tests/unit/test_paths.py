"""The path policy on real directories and symlinks."""

from __future__ import annotations

import pytest

from megaload.errors import BadRequestError, ForbiddenPathError
from megaload.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, PathPolicy


@pytest.fixture
def tree(tmp_path):
    read, save, outside = tmp_path / "read", tmp_path / "save", tmp_path / "outside"
    for d in (read, save, outside, read / "ckpt", read / "inner"):
        d.mkdir()
    (read / "escape").symlink_to(outside, target_is_directory=True)
    (read / "inner_link").symlink_to(read / "inner", target_is_directory=True)
    (save / "out_link").symlink_to(outside, target_is_directory=True)
    return PathPolicy([read], [save]), read, save, outside


def test_inside_paths_resolve(tree):
    policy, read, save, _ = tree
    assert policy.resolve_checkpoint("ckpt") == read / "ckpt"
    assert policy.resolve_checkpoint(str(read / "ckpt")) == read / "ckpt"
    assert policy.resolve_checkpoint("inner_link") == read / "inner"  # a symlink that stays inside
    assert policy.resolve_checkpoint("does/not/exist/yet") == read / "does/not/exist/yet"
    assert policy.resolve_save("new/run") == save / "new/run"


def test_escapes_are_forbidden(tree):
    policy, read, save, outside = tree
    for raw in (str(outside), "escape", "escape/sub", "../outside", "ckpt/../../outside", "ckpt/.."):
        with pytest.raises(ForbiddenPathError) as info:
            policy.resolve_checkpoint(raw, field="checkpoint_path")
        assert info.value.field == "checkpoint_path" and info.value.path == raw
    for raw in ("out_link/x", str(read / "x"), "../read/x"):
        with pytest.raises(ForbiddenPathError):
            policy.resolve_save(raw)
    with pytest.raises(ForbiddenPathError):
        policy.ensure_inside_checkpoint_roots(read / "escape")
    assert policy.ensure_inside_checkpoint_roots(read / "inner_link") == read / "inner"


def test_malformed_paths_are_bad_requests(tree):
    policy, *_ = tree
    cases = {
        "a\x00b": None,
        "": None,
        "\ud800": None,
        "a/" * (MAX_PATH_BYTES // 2 + 1): MAX_PATH_BYTES,
        "x" * (MAX_NAME_BYTES + 1): MAX_NAME_BYTES,
        "é" * 200: MAX_NAME_BYTES,  # 400 bytes in UTF-8
    }
    for raw, limit in cases.items():
        with pytest.raises(BadRequestError) as info:
            policy.resolve_checkpoint(raw, field="path")
        assert info.value.field == "path" and info.value.limit == limit
    assert "\\0" in str(_error(policy, "a\x00b"))


def test_a_relative_path_that_outgrows_path_max_once_joined_to_its_root_is_a_bad_request(tree):
    policy, read, *_ = tree
    raw = "/".join(["x" * MAX_NAME_BYTES] * 16)  # 4095 bytes: within the limit as given
    assert len(raw) <= MAX_PATH_BYTES
    with pytest.raises(BadRequestError) as info:
        policy.resolve_checkpoint(raw, field="checkpoint_path")
    assert info.value.limit == MAX_PATH_BYTES and "resolves to" in str(info.value)


def _error(policy, raw):
    try:
        policy.resolve_checkpoint(raw)
    except BadRequestError as e:
        return e
    raise AssertionError("no error")


def test_no_roots_means_nothing_is_allowed(tmp_path):
    policy = PathPolicy([tmp_path], [])
    with pytest.raises(ForbiddenPathError, match="no save roots"):
        policy.resolve_save("x")
    with pytest.raises(BadRequestError):
        PathPolicy([tmp_path], [tmp_path]).resolve_save(str(tmp_path))  # the root itself
