"""Where a checkpoint is: iteration dirs, save dirs and their tracker, and what is wrong when
there is no usable checkpoint. Each error names the path concerned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from megaload.checkpoint import (
    CheckpointError,
    CheckpointFormat,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsupportedCheckpointError,
    inspect_layout,
    load_model_config,
    resolve_iteration_dir,
)

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
BRIDGE = FIXTURES_DIR / "bridge_gpt_tied_rope_fp32" / "checkpoint"
MLM = FIXTURES_DIR / "mlm_gpt" / "checkpoint"


def _names_path(err: CheckpointError, path: Path) -> None:
    """``err.path`` is ``path`` and the message names it (whole, or as directory + name)."""
    message = str(err)
    named = str(path) in message or (str(path.parent) in message and path.name in message)
    assert named, f"{path} not named in {message!r}"
    assert err.path is not None and Path(err.path) == path


# --- what resolves ------------------------------------------------------------------------------


def test_iteration_dir_resolves_to_itself():
    assert resolve_iteration_dir(BRIDGE / "iter_0000000") == BRIDGE / "iter_0000000"
    assert resolve_iteration_dir(str(MLM / "iter_0000010")) == MLM / "iter_0000010"


@pytest.mark.parametrize(("save_dir", "iter_name"), [(BRIDGE, "iter_0000000"), (MLM, "iter_0000010")])
def test_save_dir_follows_tracker(save_dir, iter_name):
    assert (save_dir / "latest_checkpointed_iteration.txt").read_text().strip() in ("0", "10")
    assert resolve_iteration_dir(save_dir) == save_dir / iter_name


def test_relative_path_is_made_absolute(monkeypatch):
    monkeypatch.chdir(MLM.parent)
    got = resolve_iteration_dir("checkpoint")
    assert got.is_absolute()
    assert got == MLM / "iter_0000010"


@pytest.mark.parametrize("text", ["10", "10\n", " 10 \n", "0000010"])
def test_tracker_whitespace_and_zero_padding(tmp_path, text):
    (tmp_path / "iter_0000010").mkdir()
    (tmp_path / "iter_0000010" / "common.pt").write_bytes(b"")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text(text)
    assert resolve_iteration_dir(tmp_path) == tmp_path / "iter_0000010"


def test_release_tracker(copy_fixture):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    (save_dir / "iter_0000000").rename(save_dir / "release")
    (save_dir / "latest_checkpointed_iteration.txt").write_text("release")
    assert resolve_iteration_dir(save_dir) == save_dir / "release"
    layout = inspect_layout(save_dir)
    assert layout.iteration_dir == save_dir / "release"
    assert layout.iteration is None
    cfg, args = load_model_config(save_dir)
    assert cfg.num_layers == 2 and args is None


@pytest.mark.parametrize(
    ("path", "fmt", "iteration"),
    [(BRIDGE, CheckpointFormat.BRIDGE, 0), (MLM, CheckpointFormat.MEGATRON_LM, 10)],
)
def test_inspect_layout_of_fixtures(path, fmt, iteration):
    layout = inspect_layout(path)
    assert layout.format is fmt
    assert layout.iteration == iteration
    assert layout.sharded_backend == "torch_dist"
    assert layout.iteration_dir.name == f"iter_{iteration:07d}"


def test_metadata_json_is_optional(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    (save_dir / "iter_0000010" / "metadata.json").unlink()
    assert inspect_layout(save_dir).sharded_backend == "torch_dist"


# --- what does not ------------------------------------------------------------------------------


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope"
    for fn in (resolve_iteration_dir, inspect_layout, load_model_config):
        with pytest.raises(CheckpointNotFoundError) as info:
            fn(missing)
        assert isinstance(info.value, FileNotFoundError)
        _names_path(info.value, missing)


def test_a_file_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"\x00" * 10)
    for fn in (resolve_iteration_dir, inspect_layout, load_model_config):
        with pytest.raises(NotACheckpointError) as info:
            fn(f)
        _names_path(info.value, f)


def test_an_empty_dir_is_not_a_checkpoint(tmp_path):
    for fn in (resolve_iteration_dir, inspect_layout, load_model_config):
        with pytest.raises(NotACheckpointError) as info:
            fn(tmp_path)
        _names_path(info.value, tmp_path)


def test_unrelated_files_are_not_a_checkpoint(tmp_path):
    (tmp_path / "README.md").write_text("hello")
    (tmp_path / "iter_0000001").mkdir()  # an iter dir but no tracker: the save dir is not usable
    with pytest.raises(NotACheckpointError):
        resolve_iteration_dir(tmp_path)


def test_nul_byte_in_path():
    with pytest.raises(NotACheckpointError):
        resolve_iteration_dir("ab\x00cd")


def test_tracker_naming_a_missing_dir(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    (save_dir / "latest_checkpointed_iteration.txt").write_text("20")
    with pytest.raises(CorruptCheckpointError) as info:
        resolve_iteration_dir(save_dir)
    _names_path(info.value, save_dir / "iter_0000020")
    assert "latest_checkpointed_iteration.txt" in str(info.value)
    with pytest.raises(CorruptCheckpointError):
        load_model_config(save_dir)


def test_tracker_release_without_release_dir(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    (save_dir / "latest_checkpointed_iteration.txt").write_text("release")
    with pytest.raises(CorruptCheckpointError) as info:
        resolve_iteration_dir(save_dir)
    _names_path(info.value, save_dir / "release")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n  \n",
        b"ten",
        b"-1",
        b"1.5",
        b"10 11",
        b"../iter_0000010",
        b"9" * 100,
        b"\xff\xfe\x00",
        b"RELEASE!",
        "\u00b2".encode(),  # superscript two: str.isdigit() says yes, int() says no
    ],
)
def test_garbage_tracker(tmp_path, content):
    (tmp_path / "latest_checkpointed_iteration.txt").write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        resolve_iteration_dir(tmp_path)
    _names_path(info.value, tmp_path / "latest_checkpointed_iteration.txt")


def test_tracker_that_is_a_directory(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").mkdir()
    with pytest.raises(CorruptCheckpointError) as info:
        resolve_iteration_dir(tmp_path)
    _names_path(info.value, tmp_path / "latest_checkpointed_iteration.txt")


@pytest.mark.parametrize("fixture", ["bridge_gpt_tied_rope_fp32", "mlm_gpt"])
@pytest.mark.parametrize("missing", [".metadata", "common.pt"])
def test_missing_required_file_is_corrupt(copy_fixture, fixture, missing):
    save_dir = copy_fixture(fixture)
    iter_dir = resolve_iteration_dir(save_dir)
    (iter_dir / missing).unlink()
    with pytest.raises(CorruptCheckpointError) as info:
        inspect_layout(save_dir)
    _names_path(info.value, iter_dir / missing)
    with pytest.raises(CorruptCheckpointError):
        load_model_config(save_dir)


@pytest.mark.parametrize("backend", ["zarr", "torch", "fsdp_dtensor"])
def test_non_torch_dist_backend_is_unsupported(copy_fixture, backend):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    iter_dir = save_dir / "iter_0000000"
    meta = json.loads((iter_dir / "metadata.json").read_text())
    meta["sharded_backend"] = backend
    (iter_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UnsupportedCheckpointError) as info:
        inspect_layout(save_dir)
    _names_path(info.value, iter_dir)
    assert repr(backend) in str(info.value)
    with pytest.raises(UnsupportedCheckpointError):
        load_model_config(iter_dir)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"torch_dist"'])
def test_garbage_metadata_json_is_corrupt(copy_fixture, content):
    save_dir = copy_fixture("mlm_gpt")
    meta_path = save_dir / "iter_0000010" / "metadata.json"
    meta_path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        inspect_layout(save_dir)
    _names_path(info.value, meta_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_tracker(tmp_path):
    tracker = tmp_path / "latest_checkpointed_iteration.txt"
    tracker.write_text("1")
    tracker.chmod(0)
    try:
        with pytest.raises(CorruptCheckpointError) as info:
            resolve_iteration_dir(tmp_path)
        _names_path(info.value, tracker)
    finally:
        tracker.chmod(0o644)
