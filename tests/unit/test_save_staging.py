"""Staging directories of saves: recognisably ours, and only stale ones removed.

Owners are real processes (this one, and a child that has exited); directories and owner
files are real, made by :class:`Staging` itself or written here in its format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megaload.checkpoint._staging import Staging, _identity, remove_stale_saves


def _dead_owner() -> dict:
    """The identity of a process that has exited: a child run to completion on this host (its
    PID and its start time from /proc, the field after the 19 that follow the name)."""
    out = subprocess.run([sys.executable, "-c", "print(open('/proc/self/stat').read())"],
                         capture_output=True, text=True, check=True)
    fields = out.stdout.rsplit(")", 1)[1].split()
    pid = int(out.stdout.split()[0])
    return dict(_identity(), pid=pid, pid_start=int(fields[19]))


def _leftover(parent: Path, name: str, owner: dict | None, tag: str = "0123456789ab", *, age: float = 0.0) -> Path:
    staging = parent / f".{name}.partial-{tag}"
    (staging / "iter_0000000").mkdir(parents=True)
    (staging / "iter_0000000" / "__0_0.distcp").write_bytes(b"half written")
    if owner is not None:
        marker = parent / f".{name}.partial-{tag}.owner"
        marker.write_text(json.dumps({"megaload_save": 1, "destination": name, "replaced": None, **owner}))
        if age:
            os.utime(marker, (time.time() - age, time.time() - age))
    return staging


def test_a_dead_owners_leftovers_are_removed_and_nothing_else(tmp_path):
    dead = _dead_owner()
    stale = _leftover(tmp_path, "ckpt", dead)
    no_owner = _leftover(tmp_path, "other", None, "abcdefabcdef")  # looks like ours, has no owner file
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("0")
    (tmp_path / "notes.partial-0123456789ab.owner").write_text("{}")  # not hidden, not ours
    removed = remove_stale_saves(tmp_path)
    assert set(removed) == {stale, stale.with_name(stale.name + ".owner")}
    assert not stale.exists() and no_owner.is_dir() and (tmp_path / "ckpt").is_dir()
    assert (tmp_path / "notes.partial-0123456789ab.owner").is_file()


def test_a_live_owner_is_left_alone(tmp_path):
    mine = _leftover(tmp_path, "ckpt", _identity())  # this process: alive
    elsewhere = dict(_dead_owner(), host="another-replica", boot_id="x")
    fresh = _leftover(tmp_path, "b", elsewhere, "111111111111")  # another host, heartbeat fresh
    old = _leftover(tmp_path, "c", elsewhere, "222222222222", age=3600)  # another host, silent for an hour
    assert remove_stale_saves(tmp_path) == [old, old.with_name(old.name + ".owner")]
    assert mine.is_dir() and fresh.is_dir() and not old.exists()
    assert remove_stale_saves(tmp_path, stale_after=0.0) == [fresh, fresh.with_name(fresh.name + ".owner")]


def test_owner_files_that_are_not_ours_are_ignored(tmp_path):
    staging = _leftover(tmp_path, "ckpt", None)
    marker = tmp_path / f"{staging.name}.owner"
    for content in ("not json", json.dumps({"destination": "ckpt", **_dead_owner()}), json.dumps([1])):
        marker.write_text(content)
        assert remove_stale_saves(tmp_path) == []
        assert staging.is_dir()
    marker.unlink()
    marker.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps({"megaload_save": 1, "destination": "ckpt", **_dead_owner()}))
    assert remove_stale_saves(tmp_path) == [] and staging.is_dir()


def test_name_limits_the_cleanup_to_one_destination(tmp_path):
    dead = _dead_owner()
    a = _leftover(tmp_path, "a", dead, "aaaaaaaaaaaa")
    b = _leftover(tmp_path, "b", dead, "bbbbbbbbbbbb")
    remove_stale_saves(tmp_path, name="a")
    assert not a.exists() and b.is_dir()


def test_recursive_cleanup_finds_nested_destinations_and_skips_checkpoints(tmp_path):
    dead = _dead_owner()
    nested = tmp_path / "team" / "run"
    nested.mkdir(parents=True)
    deep = _leftover(nested, "ckpt", dead)
    inside_checkpoint = tmp_path / "done" / "iter_0000000"
    inside_checkpoint.mkdir(parents=True)
    kept = _leftover(tmp_path / "done", "x", dead)  # in a checkpoint's own directory: still found
    assert remove_stale_saves(tmp_path) == []  # not recursive: nothing at the top
    removed = remove_stale_saves(tmp_path, recursive=True)
    assert deep in removed and kept in removed
    assert not deep.exists() and inside_checkpoint.is_dir()


def test_a_displaced_previous_checkpoint_goes_back(tmp_path):
    """Killed between the two renames of a non-atomic overwrite: the destination is missing,
    the previous checkpoint lies under .<name>.replaced-<id>, the owner file says so."""
    old = tmp_path / ".ckpt.replaced-cccccccccccc"
    old.mkdir()
    (old / "latest_checkpointed_iteration.txt").write_text("7")
    staging = _leftover(tmp_path, "ckpt", None)
    (tmp_path / f"{staging.name}.owner").write_text(json.dumps(
        {"megaload_save": 1, "destination": "ckpt", "replaced": old.name, **_dead_owner()}))
    remove_stale_saves(tmp_path)
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "7"
    assert not old.exists() and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_staging_life_cycle(tmp_path):
    dest = tmp_path / "ckpt"
    staging = Staging.create(dest)
    owner = staging.owner
    assert staging.path.is_dir() and owner.is_file() and staging.path.name.startswith(".ckpt.partial-")
    assert remove_stale_saves(tmp_path) == []  # running in this process
    (staging.path / "latest_checkpointed_iteration.txt").write_text("0")
    staging.publish()
    assert (dest / "latest_checkpointed_iteration.txt").read_text() == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    # overwrite: the previous checkpoint is replaced, nothing else is left
    again = Staging.create(dest)
    (again.path / "latest_checkpointed_iteration.txt").write_text("1")
    again.publish()
    assert (dest / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    failed = Staging.create(dest)
    failed.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("exists", [False, True])
def test_publish_failure_leaves_the_destination_as_it_was(tmp_path, exists, monkeypatch):
    from megaload.checkpoint import _staging

    dest = tmp_path / "ckpt"
    if exists:
        dest.mkdir()
        (dest / "latest_checkpointed_iteration.txt").write_text("old")
    monkeypatch.setattr(_staging, "_exchange", lambda a, b: False)  # take the two-rename path
    real_rename = os.rename
    calls = []

    def failing_rename(a, b):
        calls.append((a, b))
        if Path(b) == dest and ".partial-" in str(a):
            raise OSError(28, "No space left on device")
        return real_rename(a, b)

    monkeypatch.setattr(_staging.os, "rename", failing_rename)
    staging = Staging.create(dest)
    (staging.path / "latest_checkpointed_iteration.txt").write_text("new")
    with pytest.raises(OSError):
        staging.publish()
    if exists:
        assert (dest / "latest_checkpointed_iteration.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ckpt"] if exists else [])
