"""The client's safetensors reader against files written by the safetensors library."""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_bytes

from megaload_client._safetensors import (
    SafetensorsError,
    SafetensorsStream,
    header_length,
    parse_buffer_header,
    parse_header,
    tensor_from_buffer,
    tensors_from_buffer,
)


def _sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "decoder.layers.0.weight": torch.randn(7, 5, generator=g),
        "decoder.layers.0.bias": torch.randn(5, generator=g).to(torch.bfloat16),
        "embedding.word_embeddings.weight": torch.randn(11, 3, generator=g).to(torch.float16),
        "steps": torch.arange(9, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "tiny": torch.tensor(3, dtype=torch.uint8),  # 0-dim
        "empty": torch.zeros(0, 4),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "i8": torch.tensor([-1, 2, -3], dtype=torch.int8),
    }


@pytest.fixture
def written(tmp_path):
    tensors = _sample()
    path = tmp_path / "shard.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_header_matches_what_safetensors_wrote(written):
    path, tensors = written
    data = path.read_bytes()
    header = parse_buffer_header(data)
    assert header.metadata == {"format": "pt"}
    assert header.file_size == len(data)
    assert header.data_start == 8 + struct.unpack("<Q", data[:8])[0]
    by_name = {e.name: e for e in header.entries}
    assert set(by_name) == set(tensors)
    for name, tensor in tensors.items():
        assert by_name[name].shape == tuple(tensor.shape)
        assert by_name[name].nbytes == tensor.numel() * tensor.element_size()
    # Entries come in data order.
    assert [e.begin for e in header.entries] == sorted(e.begin for e in header.entries)


def test_tensors_from_buffer_equal_safetensors_load(written):
    path, _ = written
    buffer = bytearray(path.read_bytes())
    _assert_same(tensors_from_buffer(buffer), load_file(str(path)))


def test_tensors_view_the_buffer_without_copying(written):
    path, _ = written
    buffer = bytearray(path.read_bytes())
    tensors = tensors_from_buffer(buffer)
    header = parse_buffer_header(buffer)
    entry = next(e for e in header.entries if e.name == "decoder.layers.0.weight")
    before = tensors[entry.name][0, 0].item()
    # Writing into the buffer shows through the tensor: it is a view, not a copy.
    buffer[header.data_start + entry.begin : header.data_start + entry.begin + 4] = struct.pack("<f", 42.0)
    assert tensors[entry.name][0, 0].item() == 42.0 != before


@pytest.mark.parametrize("chunking", ["bytes", "odd", "random", "whole"])
def test_stream_parser_gives_each_tensor_whatever_the_chunking(written, chunking):
    path, _ = written
    data = path.read_bytes()
    rng = random.Random(3)
    sizes = {"bytes": lambda: 1, "odd": lambda: 7, "random": lambda: rng.randint(1, 200), "whole": lambda: len(data)}
    stream = SafetensorsStream()
    got: dict[str, torch.Tensor] = {}
    position = 0
    while position < len(data):
        step = sizes[chunking]()
        for entry, payload in stream.feed(data[position : position + step]):
            assert len(payload) == entry.nbytes
            got[entry.name] = tensor_from_buffer(payload, entry, -entry.begin)
        position += step
    stream.close()
    _assert_same(got, load_file(str(path)))


def test_stream_parser_holds_one_tensor_at_a_time():
    big = {"a": torch.ones(1000), "b": torch.full((1000,), 2.0), "c": torch.full((1000,), 3.0)}
    data = save_bytes(big)
    stream = SafetensorsStream()
    cut = len(data) - 12000 + 4100  # "a" (4000 bytes) done, 100 bytes into "b"
    out = stream.feed(data[:cut])
    assert [e.name for e, _ in out] == ["a"]
    out = stream.feed(data[cut:])
    assert [e.name for e, _ in out] == ["b", "c"]
    stream.close()


def test_stream_parser_refuses_a_truncated_file(written):
    path, _ = written
    data = path.read_bytes()
    stream = SafetensorsStream()
    stream.feed(data[:-1])
    with pytest.raises(SafetensorsError, match="ended"):
        stream.close()


def test_stream_parser_refuses_trailing_bytes(written):
    path, _ = written
    stream = SafetensorsStream()
    with pytest.raises(SafetensorsError, match="past the end"):
        stream.feed(path.read_bytes() + b"x")


def _file(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "expected 8"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "starts at data offset 4"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "describes"),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
             "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"\0" * 8,
            "starts at data offset 0",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
        ({"a": "nope"}, b"", "not an object"),
    ],
)
def test_malformed_headers_are_refused_with_the_reason(header, data, message):
    with pytest.raises(SafetensorsError, match=message):
        parse_buffer_header(_file(header, data))


def test_bad_length_prefix_and_json():
    with pytest.raises(SafetensorsError, match="need 8 bytes"):
        header_length(b"\1\0")
    with pytest.raises(SafetensorsError, match="outside"):
        header_length(struct.pack("<Q", 0))
    with pytest.raises(SafetensorsError, match="outside"):
        header_length(struct.pack("<Q", 1 << 40))
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        parse_header(b"{nope")
    with pytest.raises(SafetensorsError, match="not a JSON object"):
        parse_header(b"[1, 2]")
    with pytest.raises(SafetensorsError, match="does not fit"):
        parse_buffer_header(struct.pack("<Q", 100) + b"{}")


def test_golden_bytes_of_a_one_tensor_file():
    # Framing written out by hand: 8-byte little-endian length, JSON, then the data.
    raw = b'{"x":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}'
    data = struct.pack("<Q", len(raw)) + raw + struct.pack("<hh", -2, 300)
    tensors = tensors_from_buffer(bytearray(data))
    assert tensors["x"].tolist() == [-2, 300]
    assert tensors["x"].dtype == torch.int16
