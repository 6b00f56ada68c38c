"""The ``.distcp`` record reader gives what torch.distributed.checkpoint's own reader gives.

Checkpoints here are written by DCP itself (``dcp.save``); each load through our reader is
compared with the same load through DCP's stock ``FileSystemReader`` (the oracle) and with
the tensors that were saved. The cases cover each way a tensor item is read: straight into a
contiguous target of the same dtype (whole, or a row range of the stored tensor when the
target is a shard of it), chunk by chunk through a scratch buffer (a cast), through a
whole buffer and ``copy_`` (a transposed record, a non-contiguous target), an empty tensor,
and a record in torch's legacy (non-zip) format. "large" spans more than one read chunk.
Hostile and damaged records are refused with typed errors.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from megaload.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, temporary_distributed_context
from megaload.checkpoint._reader import _SafeFileSystemReader
from megaload.checkpoint._weights import _first_failure


def _saved() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(8, 5, generator=g)
    return {
        "plain": torch.randn(64, 48, generator=g),
        "large": torch.randn(3, 2_000_001, generator=g),  # 24 MB: more than one read chunk
        "transposed": base.t(),  # DCP keeps its strides: a non-contiguous record
        "bf16": torch.randn(6, 7, generator=g).to(torch.bfloat16),
        "ints": torch.randint(-(2**40), 2**40, (33,), generator=g, dtype=torch.int64),
        "flags": torch.rand(17, generator=g) > 0.5,
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
    }


@pytest.fixture
def saved_dir(tmp_path: Path) -> Path:
    dcp.save(_saved(), storage_writer=dcp.FileSystemWriter(tmp_path / "ckpt"), no_dist=True)
    return tmp_path / "ckpt"


def _load(reader, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dcp.load(targets, storage_reader=reader, no_dist=True)
    return targets


def _load_failure(ckpt: Path) -> BaseException:
    """The error our reader raised inside ``dcp.load`` (DCP wraps it in a CheckpointException)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        _load(_SafeFileSystemReader(ckpt), _zeros_like(_saved()))
    except CheckpointException as e:
        return _first_failure(e)
    raise AssertionError("the load succeeded")


def _zeros_like(tensors: dict[str, torch.Tensor], **kw) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(v.shape, dtype=kw.get("dtype") or v.dtype) for k, v in tensors.items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def test_same_dtype_load_equals_saved_and_stock_reader(saved_dir):
    ours = _load(_SafeFileSystemReader(saved_dir), _zeros_like(_saved()))
    stock = _load(FileSystemReader(saved_dir), _zeros_like(_saved()))
    _assert_same(ours, _saved())
    _assert_same(ours, stock)


def test_cast_on_load_equals_stock_reader(saved_dir):
    for dtype in (torch.bfloat16, torch.float64):
        floats = {k: v for k, v in _saved().items() if v.is_floating_point()}
        ours = _load(_SafeFileSystemReader(saved_dir), _zeros_like(floats, dtype=dtype))
        stock = _load(FileSystemReader(saved_dir), _zeros_like(floats, dtype=dtype))
        _assert_same(ours, stock)
        _assert_same(ours, {k: v.to(dtype) for k, v in floats.items()})


def test_non_contiguous_targets_are_filled_in_place(saved_dir):
    saved = _saved()
    backing = {k: torch.zeros(tuple(reversed(v.shape)), dtype=v.dtype) for k, v in saved.items() if v.dim() == 2}
    targets = {k: b.t() for k, b in backing.items()}  # views with swapped strides
    assert not targets["plain"].is_contiguous()
    _load(_SafeFileSystemReader(saved_dir), targets)
    for key, backing_tensor in backing.items():
        assert torch.equal(backing_tensor.t(), saved[key]), key


def test_shards_of_a_stored_tensor_read_their_rows(tmp_path):
    """A target that is two row-shards of one stored tensor: each read item narrows the
    stored tensor (a byte range of its record), as when a load reshards."""
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    whole = torch.arange(12 * 5, dtype=torch.float32).reshape(12, 5)
    dcp.save({"w": whole}, storage_writer=dcp.FileSystemWriter(tmp_path / "ckpt"), no_dist=True)
    with temporary_distributed_context("gloo"):
        results = []
        for reader_type in (_SafeFileSystemReader, FileSystemReader):
            top, bottom = torch.zeros(7, 5), torch.zeros(5, 5)
            sharded = init_from_local_shards(
                [Shard.from_tensor_and_offsets(top, [0, 0], 0), Shard.from_tensor_and_offsets(bottom, [7, 0], 0)],
                12,
                5,
            )
            dcp.load({"w": sharded}, storage_reader=reader_type(tmp_path / "ckpt"))
            results.append((top, bottom))
    (top, bottom), (stock_top, stock_bottom) = results
    assert torch.equal(top, whole[:7]) and torch.equal(bottom, whole[7:])
    assert torch.equal(top, stock_top) and torch.equal(bottom, stock_bottom)


# --- records replaced after the fact ---------------------------------------------------------


def _replace_record(ckpt: Path, fqn: str, blob: bytes) -> None:
    """Append ``blob`` to the data file and point ``fqn``'s item at it (metadata rewritten)."""
    metadata = FileSystemReader(ckpt).read_metadata()
    for index, info in list(metadata.storage_data.items()):
        if index.fqn == fqn:
            data_file = ckpt / info.relative_path
            offset = data_file.stat().st_size
            with open(data_file, "ab") as f:
                f.write(blob)
            metadata.storage_data[index] = replace(info, offset=offset, length=len(blob))
            break
    else:
        raise AssertionError(f"{fqn} not in the checkpoint")
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata, protocol=2))


def _torch_save(obj, **kw) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kw)
    return buffer.getvalue()


def test_legacy_format_record_loads_like_the_stock_reader(saved_dir):
    replacement = torch.randn(64, 48)
    _replace_record(saved_dir, "plain", _torch_save(replacement, _use_new_zipfile_serialization=False))
    ours = _load(_SafeFileSystemReader(saved_dir), _zeros_like(_saved()))
    stock = _load(FileSystemReader(saved_dir), _zeros_like(_saved()))
    assert torch.equal(ours["plain"], replacement)
    _assert_same(ours, stock)


class _Tagged:
    """A class someone made safe process-wide; a tensor record has no business naming it."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag


class _ShellPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_tensor_record_naming_a_process_wide_safe_global_is_refused(saved_dir):
    blob = _torch_save({"w": torch.zeros(2), "tag": _Tagged("x")})
    _replace_record(saved_dir, "plain", blob)
    with torch.serialization.safe_globals([_Tagged]):
        # control: torch's weights_only load (what DCP's reader uses) admits it
        assert torch.load(io.BytesIO(blob), weights_only=True)["tag"].tag == "x"
        error = _load_failure(saved_dir)
    assert isinstance(error, UnsafeCheckpointError)
    assert "_Tagged" in str(error) and "plain" in str(error)


def test_hostile_tensor_record_runs_nothing(saved_dir, tmp_path):
    marker = tmp_path / "marker"
    blob = _torch_save(_ShellPayload(marker))
    torch.load(io.BytesIO(blob), weights_only=False)  # control: the payload is live
    assert marker.exists()
    marker.unlink()
    _replace_record(saved_dir, "plain", blob)
    error = _load_failure(saved_dir)
    assert isinstance(error, UnsafeCheckpointError)
    assert "system" in str(error)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "not_a_tensor", "garbage"])
def test_damaged_tensor_record_is_corrupt(saved_dir, damage):
    good = _torch_save(torch.randn(64, 48))
    blob = {
        "truncated": good[: len(good) // 2],
        "not_a_tensor": _torch_save([1, 2, 3]),
        "garbage": b"PK\x03\x04" + b"\x00" * 200,
    }[damage]
    _replace_record(saved_dir, "plain", blob)
    error = _load_failure(saved_dir)
    assert isinstance(error, CorruptCheckpointError), repr(error)
    assert "__0_0.distcp" in str(error) and "plain" in str(error)


def test_staging_buffer_is_plain_memory_for_cpu_targets():
    """Reads into CPU tensors stage (for casts) through ordinary memory; page-locked staging is
    only for GPU targets (not testable on a CPU-only host: torch cannot pin memory without CUDA)."""
    from megaload.checkpoint._distcp import CHUNK_BYTES
    from megaload.checkpoint._reader import staging_buffer

    scratch = staging_buffer([torch.empty(4), torch.empty(2, dtype=torch.bfloat16)])
    assert scratch.dtype == torch.uint8 and scratch.numel() == CHUNK_BYTES and not scratch.is_pinned()


def test_records_with_the_same_pickle_are_decoded_once(tmp_path):
    """Layers repeat tensor geometries: a record whose data.pkl was seen before reuses the meta
    tensor decoded for it (same pickle bytes, same geometry) and still reads its own bytes."""
    import torch.distributed.checkpoint as dcp_

    from megaload.checkpoint._distcp import FileWindow, open_tensor_record
    from megaload.checkpoint._pickle import load_dcp_metadata

    tensors = {f"layer{i}": torch.full((64, 8), float(i)) for i in range(3)}
    dcp_.save(tensors, checkpoint_id=str(tmp_path), no_dist=True)
    metadata = load_dcp_metadata(tmp_path)
    seen: dict = {}
    got = {}
    for index, info in metadata.storage_data.items():
        with open(tmp_path / info.relative_path, "rb", buffering=0) as raw:
            record = open_tensor_record(FileWindow(raw, info.offset, info.length), what=index.fqn, seen=seen)
            got[index.fqn] = (record.meta, record.read().clone())
    assert len(seen) == 1  # one geometry, decoded once
    assert len({id(meta) for meta, _ in got.values()}) == 1
    for name, (_, value) in got.items():
        assert torch.equal(value, tensors[name]), name
