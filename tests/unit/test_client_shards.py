"""Shards to tensors: index checks, checksums, downloaded files on disk."""

from __future__ import annotations

import json

import pytest
import torch
import xxhash
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from megaload_client import INDEX_FILENAME, IntegrityError, StateDictIndex
from megaload_client._checksums import TensorVerifier, checksums_available
from megaload_client._download import ShardFiles, verify_file, write_index
from megaload_client._safetensors import parse_buffer_header
from megaload_client._shards import StreamSink, check_index, tensors_from_shard


def _shards() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(3, generator=g)},
        {"b.weight": torch.randn(2, 2, generator=g).to(torch.bfloat16)},
    ]


def _index_for(blobs: list[bytes], checksum: bool = True) -> StateDictIndex:
    """An index built by reading the files, the way a service would describe them."""
    shards, weight_map, checksums, total = [], {}, {}, 0
    for number, blob in enumerate(blobs):
        name = f"model-{number + 1:05d}-of-{len(blobs):05d}.safetensors"
        header = parse_buffer_header(blob)
        for entry in header.entries:
            weight_map[entry.name] = name
            start = header.data_start + entry.begin
            checksums[entry.name] = xxhash.xxh3_64(blob[start : start + entry.nbytes]).hexdigest()
            total += entry.nbytes
        shards.append({"index": number, "filename": name, "size": len(blob), "tensor_count": len(header.entries)})
    return StateDictIndex.model_validate(
        {
            "metadata": {"total_size": total},
            "total_size": total,
            "shards": shards,
            "weight_map": weight_map,
            "checksums": checksums if checksum else {},
        }
    )


@pytest.fixture
def blobs():
    return [save_bytes(part) for part in _shards()]


def test_checksums_are_available_here():
    assert checksums_available()
    assert not checksums_available("md5")


def test_tensors_from_shard_match_and_are_verified(blobs):
    index = _index_for(blobs)
    verifier = TensorVerifier(index.checksums, index.checksum_algorithm)
    assert verifier.active
    for shard, blob, want in zip(index.shards, blobs, _shards(), strict=True):
        got = tensors_from_shard(bytearray(blob), shard, index, verifier)
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert verifier.checked == 3


def test_a_flipped_byte_fails_the_checksum(blobs):
    index = _index_for(blobs)
    corrupt = bytearray(blobs[0])
    corrupt[-1] ^= 0xFF
    with pytest.raises(IntegrityError, match="does not match the index"):
        tensors_from_shard(corrupt, index.shards[0], index, TensorVerifier(index.checksums, "xxh3_64"))
    # Without verification only the framing is checked, and the flip goes through.
    tensors_from_shard(corrupt, index.shards[0], index, TensorVerifier(index.checksums, "xxh3_64", enabled=False))


def test_unknown_algorithm_or_no_checksums_verify_sizes_only(blobs):
    index = _index_for(blobs)
    assert not TensorVerifier(index.checksums, "sha-9000").active
    assert not TensorVerifier({}, "xxh3_64").active


def test_shard_not_matching_the_index_is_refused(blobs):
    index = _index_for(blobs)
    verifier = TensorVerifier({}, "xxh3_64")
    with pytest.raises(IntegrityError, match="not mapped to this file"):
        tensors_from_shard(bytearray(blobs[1]), index.shards[0].model_copy(update={"size": len(blobs[1]), "tensor_count": 1}), index, verifier)
    with pytest.raises(IntegrityError, match="not valid safetensors"):
        tensors_from_shard(bytearray(b"garbage!"), index.shards[0], index, verifier)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["shards"].reverse(), "at position 0"),
        (lambda d: d["shards"][0].update(filename="../evil.safetensors"), "not a plain file name"),
        (lambda d: d["shards"][0].update(filename=".hidden"), "not a plain file name"),
        (lambda d: d["shards"][1].update(filename=d["shards"][0]["filename"]), "same file name"),
        (lambda d: d["weight_map"].update({"x": "other.safetensors"}), "not shards"),
    ],
)
def test_check_index_refuses_inconsistent_indexes(blobs, change, message):
    document = _index_for(blobs).model_dump()
    change(document)
    with pytest.raises(IntegrityError, match=message):
        check_index(StateDictIndex.model_validate(document))


def test_stream_sink_yields_verified_tensors_and_cannot_restart(blobs):
    index = _index_for(blobs)
    sink = StreamSink(index.shards[0], index, TensorVerifier(index.checksums, "xxh3_64"))
    got = {}
    for i in range(0, len(blobs[0]), 5):
        sink.write(memoryview(blobs[0][i : i + 5]))
        got.update(sink.drain())
    sink.close()
    want = _shards()[0]
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(IntegrityError, match="changed on the server"):
        sink.reset()


def test_verify_file_and_commit(tmp_path, blobs):
    index = _index_for(blobs)
    verifier = TensorVerifier(index.checksums, "xxh3_64")
    files = ShardFiles(tmp_path, index.shards[0])
    stale = files.incomplete('"old"')
    stale.write_bytes(b"old bytes")
    sink = files.open('"new"')
    assert not stale.exists(), "a partial file of another version is removed"
    assert sink.size == 0
    sink.write(memoryview(blobs[0]))
    files.commit(sink, index, verifier)
    assert files.final.read_bytes() == blobs[0]
    assert not list(tmp_path.glob("*.incomplete"))
    assert files.final_is_valid(index, verifier)


def test_commit_refuses_and_removes_a_corrupt_file(tmp_path, blobs):
    index = _index_for(blobs)
    files = ShardFiles(tmp_path, index.shards[0])
    sink = files.open('"v"')
    corrupt = bytearray(blobs[0])
    corrupt[-2] ^= 1
    sink.write(memoryview(corrupt))
    with pytest.raises(IntegrityError, match="does not match"):
        files.commit(sink, index, TensorVerifier(index.checksums, "xxh3_64"))
    assert not files.final.exists()
    assert not list(tmp_path.glob("*.incomplete"))


def test_a_partial_file_longer_than_the_shard_starts_over(tmp_path, blobs):
    index = _index_for(blobs)
    files = ShardFiles(tmp_path, index.shards[0])
    files.incomplete('"v"').write_bytes(b"x" * (index.shards[0].size + 1))
    assert files.open('"v"').size == 0


def test_verify_file_checks_size(tmp_path, blobs):
    index = _index_for(blobs)
    path = tmp_path / index.shards[0].filename
    path.write_bytes(blobs[0][:-1])
    with pytest.raises(IntegrityError, match="on disk"):
        verify_file(path, index.shards[0], index, TensorVerifier({}, "xxh3_64"))


def test_written_index_is_hugging_face_shaped_and_loads(tmp_path, blobs):
    index = _index_for(blobs)
    for shard, blob in zip(index.shards, blobs, strict=True):
        (tmp_path / shard.filename).write_bytes(blob)
    path = write_index(tmp_path, index)
    assert path.name == INDEX_FILENAME
    document = json.loads(path.read_text())
    assert document == {"metadata": {"total_size": index.total_size}, "weight_map": index.weight_map}
    for key, filename in document["weight_map"].items():
        assert key in load_file(str(tmp_path / filename))
    assert not list(tmp_path.glob(".*.tmp"))
