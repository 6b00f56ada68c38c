"""Pickles inside a checkpoint never run code of the file's choosing.

Each hostile file below carries a payload that creates a marker file when unpickled. A control
test per payload proves the payload is live (an unrestricted unpickle does create the marker);
the library must refuse the file with UnsafeCheckpointError naming the file and the global, and
the marker must not exist afterwards. torch's process-wide safe-globals list must be left as
the caller had it.
"""

from __future__ import annotations

import argparse
import http
import io
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megaload.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    estimate_model_bytes,
    load_megatron_model,
    load_model_config,
    read_tensor_metadata,
)
from megaload.checkpoint._pickle import load_common_state_dict, load_dcp_metadata

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
ITER_DIRS = {"bridge_gpt_tied_rope_fp32": "iter_0000000", "mlm_gpt": "iter_0000010"}
FIXTURE_NAMES = sorted(ITER_DIRS)


class ShellPayload:
    """Unpickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class TouchPayload:
    """Unpickles to ``Path(<marker>).touch()`` (via ``getattr`` at pickle protocol 2)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


SHELL_GLOBAL = f"{os.system.__module__}.{os.system.__name__}"  # how pickle records it: posix.system
PAYLOADS = {
    "os.system": (ShellPayload, (SHELL_GLOBAL,)),
    "Path.touch": (TouchPayload, ("builtins.getattr", "pathlib.Path")),
}


@pytest.fixture(autouse=True)
def no_leftover_group():
    yield
    leaked = dist.is_initialized()
    if leaked:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    assert not leaked, "a process group was left behind"


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the payload ran"


def _trusted_common(name: str) -> dict:
    # the fixture itself is trusted: read it without restrictions to build hostile variants
    return torch.load(FIXTURES_DIR / name / "checkpoint" / ITER_DIRS[name] / "common.pt", weights_only=False)


def _assert_unsafe(err: BaseException, file: Path, globals_: tuple[str, ...]) -> None:
    assert isinstance(err, UnsafeCheckpointError), f"{type(err).__name__}: {err}"
    assert isinstance(err, CorruptCheckpointError) and isinstance(err, CheckpointError)
    message = str(err)
    assert str(file) in message, f"{file} not named in {message!r}"
    assert err.path == str(file)
    assert any(g in message for g in globals_), f"none of {globals_} named in {message!r}"


# --- common.pt ----------------------------------------------------------------------------------


def _hostile_common(copy_fixture, name: str, payload, where: str) -> tuple[Path, Path]:
    save_dir = copy_fixture(name)
    iter_dir = save_dir / ITER_DIRS[name]
    common = _trusted_common(name)
    if where == "top":
        common["payload"] = payload
    elif where == "nested":
        common["content_metadata"] = {**common["content_metadata"], "deep": [1, {"x": payload}]}
    elif where == "args":
        setattr(common["args"], "payload", payload)
    torch.save(common, iter_dir / "common.pt")
    return save_dir, iter_dir / "common.pt"


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
def test_control_common_payload_is_live(copy_fixture, tmp_path, payload_name):
    cls, _ = PAYLOADS[payload_name]
    live = tmp_path / "live-marker"
    _, common_path = _hostile_common(copy_fixture, "bridge_gpt_tied_rope_fp32", cls(live), "top")
    torch.load(common_path, weights_only=False)
    assert live.exists(), "the payload is not hostile: these tests would prove nothing"


HOSTILE_COMMON_CASES = [
    ("bridge_gpt_tied_rope_fp32", "top"),
    ("bridge_gpt_tied_rope_fp32", "nested"),
    ("mlm_gpt", "top"),
    ("mlm_gpt", "args"),
]


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
@pytest.mark.parametrize(("name", "where"), HOSTILE_COMMON_CASES)
def test_load_common_state_dict_refuses_payload(copy_fixture, marker, name, where, payload_name):
    cls, globals_ = PAYLOADS[payload_name]
    save_dir, common_path = _hostile_common(copy_fixture, name, cls(marker), where)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_common_state_dict(common_path.parent)
    _assert_unsafe(info.value, common_path, globals_)


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
@pytest.mark.parametrize("where", ["top", "args"])
def test_load_model_config_refuses_payload(copy_fixture, marker, where, payload_name):
    # Megatron-LM checkpoints keep their config in common.pt
    cls, globals_ = PAYLOADS[payload_name]
    save_dir, common_path = _hostile_common(copy_fixture, "mlm_gpt", cls(marker), where)
    for path in (save_dir, common_path.parent):
        with pytest.raises(UnsafeCheckpointError) as info:
            load_model_config(path)
        _assert_unsafe(info.value, common_path, globals_)


@pytest.mark.parametrize("return_state_dict", [True, False])
@pytest.mark.parametrize(("name", "where"), HOSTILE_COMMON_CASES)
def test_load_megatron_model_refuses_common_payload(copy_fixture, marker, name, where, return_state_dict):
    save_dir, common_path = _hostile_common(copy_fixture, name, ShellPayload(marker), where)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=return_state_dict, use_cpu_init=True)
    _assert_unsafe(info.value, common_path, (SHELL_GLOBAL,))
    assert not dist.is_initialized()


def test_legacy_format_common_payload_is_refused(copy_fixture, marker):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    common = _trusted_common("bridge_gpt_tied_rope_fp32")
    common["payload"] = ShellPayload(marker)
    torch.save(common, common_path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        load_common_state_dict(common_path.parent)
    assert isinstance(info.value, CorruptCheckpointError)
    assert str(common_path) in str(info.value)


def test_enum_outside_megatron_core_is_refused(copy_fixture):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    torch.save({**_trusted_common("bridge_gpt_tied_rope_fp32"), "status": http.HTTPStatus.OK}, common_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_common_state_dict(common_path.parent)
    _assert_unsafe(info.value, common_path, ("http.HTTPStatus",))


def test_megatron_core_function_is_refused(copy_fixture):
    from megatron.core.parallel_state import destroy_model_parallel

    class CallsMegatron:
        def __reduce__(self):
            return (destroy_model_parallel, ())

    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    torch.save({**_trusted_common("bridge_gpt_tied_rope_fp32"), "x": CallsMegatron()}, common_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_common_state_dict(common_path.parent)
    _assert_unsafe(info.value, common_path, ("megatron.core.parallel_state.destroy_model_parallel",))


def test_megatron_core_enum_is_admitted(copy_fixture):
    from megatron.core.transformer.enums import AttnBackend

    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    torch.save({**_trusted_common("bridge_gpt_tied_rope_fp32"), "backend": AttnBackend.local}, common_path)
    before = _safe_globals_set()
    state = load_common_state_dict(common_path.parent)
    assert state["backend"] is AttnBackend.local
    assert state["iteration"] == 0
    assert _safe_globals_set() == before


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04truncated-zip"])
def test_unreadable_common_is_corrupt_not_unsafe(copy_fixture, content):
    save_dir = copy_fixture("mlm_gpt")
    common_path = save_dir / "iter_0000010" / "common.pt"
    common_path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(common_path) in str(info.value)


def test_truncated_common_is_corrupt(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    common_path = save_dir / "iter_0000010" / "common.pt"
    data = common_path.read_bytes()
    common_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(common_path) in str(info.value)


def test_common_holding_a_non_dict_is_corrupt(copy_fixture):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    torch.save([1, 2, 3], common_path)
    with pytest.raises(CorruptCheckpointError) as info:
        load_common_state_dict(common_path.parent)
    assert str(common_path) in str(info.value)
    assert "list" in str(info.value)


# --- .metadata ----------------------------------------------------------------------------------


def _trusted_metadata(name: str):
    with open(FIXTURES_DIR / name / "checkpoint" / ITER_DIRS[name] / ".metadata", "rb") as f:
        return pickle.load(f)


def _hostile_metadata(copy_fixture, name: str, payload, how: str, protocol: int) -> tuple[Path, Path]:
    save_dir = copy_fixture(name)
    meta_path = save_dir / ITER_DIRS[name] / ".metadata"
    if how == "bare":
        obj = payload
    else:  # the real metadata with the payload tucked inside
        obj = _trusted_metadata(name)
        obj.planner_data = {"payload": payload}
    meta_path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return save_dir, meta_path


METADATA_CASES = [(name, how, proto) for name in FIXTURE_NAMES for how in ("bare", "inside") for proto in (2, 5)]


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
def test_control_metadata_payload_is_live(copy_fixture, tmp_path, payload_name):
    cls, _ = PAYLOADS[payload_name]
    live = tmp_path / "live-marker"
    _, meta_path = _hostile_metadata(copy_fixture, "mlm_gpt", cls(live), "inside", 2)
    pickle.loads(meta_path.read_bytes())
    assert live.exists(), "the payload is not hostile: these tests would prove nothing"


@pytest.mark.parametrize("payload_name", sorted(PAYLOADS))
@pytest.mark.parametrize(("name", "how", "protocol"), METADATA_CASES)
def test_metadata_payload_refused_by_readers(copy_fixture, marker, name, how, protocol, payload_name):
    cls, globals_ = PAYLOADS[payload_name]
    if payload_name == "Path.touch":
        # protocol 4+ records the dotted qualname itself; protocol 2 goes through getattr,
        # spelled with its Python 2 module name (__builtin__) in the stream
        globals_ = ("pathlib.Path.touch",) if protocol >= 4 else ("__builtin__.getattr", "builtins.getattr")
    save_dir, meta_path = _hostile_metadata(copy_fixture, name, cls(marker), how, protocol)
    for call in (
        lambda: load_dcp_metadata(meta_path.parent),
        lambda: read_tensor_metadata(save_dir),
        lambda: estimate_model_bytes(save_dir),
    ):
        with pytest.raises(UnsafeCheckpointError) as info:
            call()
        _assert_unsafe(info.value, meta_path, globals_)


@pytest.mark.parametrize("return_state_dict", [True, False])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_load_megatron_model_metadata_payload_runs_nothing(copy_fixture, marker, name, return_state_dict):
    save_dir, meta_path = _hostile_metadata(copy_fixture, name, ShellPayload(marker), "inside", 2)
    with pytest.raises(CorruptCheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=return_state_dict, use_cpu_init=True)
    assert str(meta_path) in str(info.value)
    assert SHELL_GLOBAL in str(info.value)
    assert not dist.is_initialized()


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_load_megatron_model_metadata_payload_is_unsafe_error(copy_fixture, marker, name):
    save_dir, meta_path = _hostile_metadata(copy_fixture, name, ShellPayload(marker), "inside", 2)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    _assert_unsafe(info.value, meta_path, (SHELL_GLOBAL,))


def test_metadata_with_persistent_ids_is_refused(copy_fixture):
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-1" if isinstance(obj, str) and obj == "external" else None

    save_dir = copy_fixture("mlm_gpt")
    meta_path = save_dir / "iter_0000010" / ".metadata"
    buf = io.BytesIO()
    WithPid(buf, protocol=2).dump({"x": "external"})
    meta_path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeCheckpointError) as info:
        read_tensor_metadata(save_dir)
    assert str(meta_path) in str(info.value)


@pytest.mark.parametrize("cut", [0, 1, 100, -1])
def test_truncated_metadata_is_corrupt(copy_fixture, cut):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    meta_path = save_dir / "iter_0000000" / ".metadata"
    data = meta_path.read_bytes()
    meta_path.write_bytes(data[:cut])
    with pytest.raises(CorruptCheckpointError) as info:
        read_tensor_metadata(save_dir)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(meta_path) in str(info.value)
    with pytest.raises(CorruptCheckpointError):
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)


def test_metadata_of_the_wrong_type_is_corrupt(copy_fixture):
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    meta_path = save_dir / "iter_0000000" / ".metadata"
    meta_path.write_bytes(pickle.dumps({"state_dict_metadata": "nope"}, protocol=2))
    with pytest.raises(CorruptCheckpointError) as info:
        read_tensor_metadata(save_dir)
    assert str(meta_path) in str(info.value)


# --- byte items inside .distcp (_extra_state) ---------------------------------------------------


def test_hostile_extra_state_bytes_are_refused(copy_fixture, marker, tmp_path):
    """Point one ``_extra_state`` byte item of the real metadata at a hostile torch.save blob."""
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    iter_dir = save_dir / "iter_0000000"
    metadata = _trusted_metadata("bridge_gpt_tied_rope_fp32")
    blob = io.BytesIO()
    torch.save(ShellPayload(marker), blob)
    blob = blob.getvalue()
    # control: the blob is live
    live = tmp_path / "live-marker"
    live_blob = io.BytesIO()
    torch.save(ShellPayload(live), live_blob)
    live_blob.seek(0)
    torch.load(live_blob, weights_only=False)
    assert live.exists()

    hijacked = []
    for index, info in metadata.storage_data.items():
        if "_extra_state" in index.fqn and info.relative_path == "__0_0.distcp":
            data_file = iter_dir / info.relative_path
            offset = data_file.stat().st_size
            with open(data_file, "ab") as f:
                f.write(blob)
            info.offset, info.length = offset, len(blob)
            hijacked.append(index.fqn)
    assert hijacked
    (iter_dir / ".metadata").write_bytes(pickle.dumps(metadata, protocol=2))

    for return_state_dict in (True, False):
        with pytest.raises(UnsafeCheckpointError) as info:
            load_megatron_model(save_dir, return_state_dict=return_state_dict, use_cpu_init=True)
        assert SHELL_GLOBAL in str(info.value)
        assert any(fqn.split("/")[0] in str(info.value) for fqn in hijacked), str(info.value)
        assert not dist.is_initialized()


# --- torch's process-wide safe-globals list -----------------------------------------------------


def _safe_globals_set() -> set:
    """torch keeps its safe globals in a set; the list it returns has no meaningful order."""
    return set(torch.serialization.get_safe_globals())


def _every_load(name: str) -> None:
    save_dir = FIXTURES_DIR / name / "checkpoint"
    load_model_config(save_dir)
    load_common_state_dict(save_dir / ITER_DIRS[name])
    read_tensor_metadata(save_dir)
    load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    load_megatron_model(save_dir, use_cpu_init=True)


@pytest.fixture
def restore_safe_globals():
    saved = list(torch.serialization.get_safe_globals())
    yield saved
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_safe_globals_unchanged_by_loads(restore_safe_globals, name):
    # Some megatron-core modules register safe globals when first imported; load once so every
    # import has happened and only what the loads themselves do is compared.
    _every_load(name)
    restore_safe_globals[:] = list(torch.serialization.get_safe_globals())
    # megatron.core registers argparse.Namespace on import; take it out so the library has to
    # admit it itself (the Megatron-LM fixture needs it) and must not leave it behind
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals([g for g in restore_safe_globals if g is not argparse.Namespace])
    before = _safe_globals_set()
    assert argparse.Namespace not in before
    _every_load(name)
    assert _safe_globals_set() == before


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_callers_own_safe_globals_are_kept(restore_safe_globals, name):
    torch.serialization.add_safe_globals([argparse.Namespace])
    before = _safe_globals_set()
    _every_load(name)
    after = _safe_globals_set()
    assert argparse.Namespace in after
    assert after == before


def test_process_wide_safe_globals_do_not_widen_the_allowlist(copy_fixture):
    import types

    assert types.SimpleNamespace in torch.serialization.get_safe_globals()  # megatron.core put it there
    save_dir = copy_fixture("bridge_gpt_tied_rope_fp32")
    common_path = save_dir / "iter_0000000" / "common.pt"
    torch.save({**_trusted_common("bridge_gpt_tied_rope_fp32"), "x": types.SimpleNamespace(a=1)}, common_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_common_state_dict(common_path.parent)
    _assert_unsafe(info.value, common_path, ("types.SimpleNamespace",))


def test_safe_globals_unchanged_after_a_refusal(restore_safe_globals, copy_fixture, marker):
    before = _safe_globals_set()
    save_dir, _ = _hostile_common(copy_fixture, "mlm_gpt", ShellPayload(marker), "args")
    with pytest.raises(UnsafeCheckpointError):
        load_model_config(save_dir)
    assert _safe_globals_set() == before
