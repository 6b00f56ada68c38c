"""Checking shards while they arrive, and sinks that are read into in place."""

from __future__ import annotations

import gc
import mmap
import sys

import pytest
import torch
import xxhash
from safetensors.torch import save as save_bytes

from megaload_client import IntegrityError, StateDictIndex
from megaload_client._checksums import TensorVerifier
from megaload_client._memory import MAPPED_MIN_BYTES, fresh_buffer
from megaload_client._resume import BufferSink, FileSink, ShardTransfer
from megaload_client._safetensors import parse_buffer_header
from megaload_client._shards import ShardChecker, StreamSink


def _blob() -> bytes:
    g = torch.Generator().manual_seed(3)
    return save_bytes(
        {
            "a.weight": torch.randn(40, 30, generator=g),
            "a.empty": torch.empty(0, 4),
            "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.step": torch.tensor([3], dtype=torch.int64),
        }
    )


def _index(blob: bytes) -> StateDictIndex:
    header = parse_buffer_header(blob)
    name = "model-00001-of-00001.safetensors"
    checksums = {
        e.name: xxhash.xxh3_64(blob[header.data_start + e.begin : header.data_start + e.end]).hexdigest()
        for e in header.entries
    }
    return StateDictIndex.model_validate(
        {
            "metadata": {"total_size": header.data_length},
            "total_size": header.data_length,
            "shards": [{"index": 0, "filename": name, "size": len(blob), "tensor_count": len(header.entries)}],
            "weight_map": {e.name: name for e in header.entries},
            "checksums": checksums,
        }
    )


def _feed(checker: ShardChecker, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        checker.feed(memoryview(data[i : i + step]))


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_checker_verifies_every_tensor_whatever_the_chunking(step):
    blob = _blob()
    index = _index(blob)
    verifier = TensorVerifier(index.checksums, "xxh3_64")
    checker = ShardChecker(index.shards[0], index, verifier)
    _feed(checker, blob, step)
    checker.close()
    assert verifier.checked == 4  # the empty tensor included


@pytest.mark.parametrize("tensor", ["a.weight", "b.bias", "c.step"])
def test_checker_names_the_tensor_whose_byte_flipped(tensor):
    blob = bytearray(_blob())
    index = _index(bytes(blob))
    header = parse_buffer_header(blob)
    (entry,) = [e for e in header.entries if e.name == tensor]
    blob[header.data_start + entry.end - 1] ^= 0x01  # its last byte
    checker = ShardChecker(index.shards[0], index, TensorVerifier(index.checksums, "xxh3_64"))
    with pytest.raises(IntegrityError, match=f"'{tensor}'.*does not match"):
        _feed(checker, bytes(blob), 5)


def test_checker_refuses_short_long_and_foreign_shards():
    blob = _blob()
    index = _index(blob)
    shard = index.shards[0]
    verifier = TensorVerifier(index.checksums, "xxh3_64")
    short = ShardChecker(shard, index, verifier)
    _feed(short, blob[:-3], 100)
    with pytest.raises(IntegrityError, match="ended after"):
        short.close()
    with pytest.raises(IntegrityError, match="past the end"):
        _feed(ShardChecker(shard, index, verifier), blob + b"xx", 100)
    with pytest.raises(IntegrityError, match="not valid safetensors"):
        _feed(ShardChecker(shard, index, verifier), b"\xff" * 16, 16)
    other = save_bytes({"x": torch.zeros(2)})
    with pytest.raises(IntegrityError, match="header describes"):
        _feed(ShardChecker(shard, index, verifier), other, 100)


def test_checker_starts_over_with_a_restarted_transfer():
    blob = _blob()
    index = _index(blob)
    verifier = TensorVerifier(index.checksums, "xxh3_64")
    checker = ShardChecker(index.shards[0], index, verifier)
    sink = BufferSink(len(blob))
    transfer = ShardTransfer(sink, len(blob), checker=checker)
    transfer.write(blob[:100])  # held bytes, thrown away when a 200 starts the file over
    transfer.begin(200, {"content-length": str(len(blob))})
    stream = memoryview(blob)
    while transfer.receive(lambda window: _copy_into(window, stream, transfer.offset), limit=333):
        pass
    transfer.finish()
    assert bytes(sink.buffer) == blob and verifier.checked == 4


def _copy_into(window: memoryview, source: memoryview, offset: int) -> int:
    n = min(len(window), len(source) - offset)
    window[:n] = source[offset : offset + n]
    return n


def test_stream_sink_read_in_place_lands_in_the_tensors_own_buffers():
    blob = _blob()
    index = _index(blob)
    sink = StreamSink(index.shards[0], index, None)
    checker = ShardChecker(index.shards[0], index, TensorVerifier(index.checksums, "xxh3_64"))
    transfer = ShardTransfer(sink, len(blob), checker=checker)
    source = memoryview(blob)
    got = {}
    while transfer.receive(lambda window: _copy_into(window, source, transfer.offset), limit=50):
        got.update(sink.drain())
    transfer.finish()
    sink.close()
    got.update(sink.drain())
    want = {name: t for name, t in _reference().items()}
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _reference() -> dict[str, torch.Tensor]:
    from safetensors.torch import load as load_bytes

    return load_bytes(_blob())


def test_file_sink_reads_through_a_bounded_buffer_and_replays_what_it_holds(tmp_path):
    blob = _blob()
    path = tmp_path / "s.incomplete"
    path.write_bytes(blob[:1000])
    sink = FileSink(path)
    seen = bytearray()
    sink.replay(lambda data: seen.extend(data))
    assert bytes(seen) == blob[:1000]
    transfer = ShardTransfer(sink, len(blob))
    transfer.begin(206, {"content-range": f"bytes 1000-{len(blob) - 1}/{len(blob)}"})
    source = memoryview(blob)
    while transfer.receive(lambda window: _copy_into(window, source, transfer.offset)):
        pass
    transfer.finish()
    sink.close()
    assert path.read_bytes() == blob


def test_fresh_buffer_is_writable_zeroed_and_exact():
    for size in (0, 1, 12345, MAPPED_MIN_BYTES - 1, MAPPED_MIN_BYTES, 3 * MAPPED_MIN_BYTES + 7):
        buffer = fresh_buffer(size)
        view = memoryview(buffer)
        assert len(view) == size and not view.readonly
        assert bytes(view[:3]) == bytes(view[-3:]) == bytes(min(size, 3))  # zeroed
        if size:
            view[size - 1] = 7
            assert buffer[size - 1] == 7
        view.release()
    sink = BufferSink(3, fresh_buffer(3))
    sink.write(memoryview(b"abc"))
    assert bytes(sink.buffer) == b"abc"
    with pytest.raises(ValueError, match="expected 4"):
        BufferSink(4, bytearray(3))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="anonymous mappings are used on Linux only")
def test_large_fresh_buffers_are_mappings_that_outlive_their_tensor_views():
    assert isinstance(fresh_buffer(MAPPED_MIN_BYTES - 1), bytearray)
    buffer = fresh_buffer(MAPPED_MIN_BYTES)
    assert isinstance(buffer, mmap.mmap)
    tensor = torch.frombuffer(buffer, dtype=torch.float32)
    tensor.fill_(1.5)
    del buffer  # the tensor alone keeps the mapping alive
    gc.collect()
    assert float(tensor.sum()) == 1.5 * MAPPED_MIN_BYTES / 4
