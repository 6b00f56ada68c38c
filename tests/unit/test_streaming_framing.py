"""Safetensors framing of planned shards: golden bytes, and agreement with the safetensors library."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from megaload.streaming import ShardOptions, encode_header, iter_shard_bytes, plan_shards


def shard_file(state, options=None, index=0, **kwargs) -> bytes:
    plan = plan_shards(state, options)
    return b"".join(bytes(p) for p in iter_shard_bytes(plan, index, state, **kwargs))


def test_golden_bytes_one_float32_vector():
    # Written out by hand from the format description: 8-byte little-endian header length,
    # compact JSON with __metadata__ first, spaces up to a multiple of 8, then the data.
    text = b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    assert len(text) == 85
    expected = (
        b"\x58\x00\x00\x00\x00\x00\x00\x00"  # 88 = 85 + 3 spaces
        + text
        + b"   "
        + b"\x00\x00\x80\x3f"  # 1.0f
        + b"\x00\x00\x00\x40"  # 2.0f
    )
    assert shard_file({"a": torch.tensor([1.0, 2.0])}) == expected


def test_golden_bytes_bf16_scalar_and_empty_int8():
    text = (
        b'{"__metadata__":{"format":"pt"},'
        b'"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]},'
        b'"e":{"dtype":"I8","shape":[0,3],"data_offsets":[2,2]}}'
    )
    assert len(text) == 139
    expected = b"\x90" + b"\x00" * 7 + text + b" " * 5 + b"\xc0\x3f"  # 144; bf16 1.5 = 0x3fc0
    state = {"s": torch.tensor(1.5, dtype=torch.bfloat16), "e": torch.zeros(0, 3, dtype=torch.int8)}
    assert shard_file(state) == expected


def test_header_is_padded_to_eight_bytes_for_every_length():
    for length in range(1, 40):
        header = encode_header([("n" * length, "F32", (1,), 0, 4)])
        (size,) = struct.unpack("<Q", header[:8])
        assert size == len(header) - 8
        assert len(header) % 8 == 0
        assert header[8:].rstrip(b" ") == header[8:].rstrip()  # padding is spaces only
        json.loads(header[8:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8])
def test_same_bytes_as_safetensors_save_for_one_dtype(dtype):
    # With one element width our layout order is input order; in name order it is also the
    # library's order, so the whole file must be identical.
    gen = torch.Generator().manual_seed(0)
    state = {
        name: (torch.randn(shape, generator=gen) * 100).to(dtype)
        for name, shape in [("a.weight", (7, 5)), ("b.bias", (3,)), ("c", ()), ("d.empty", (0, 4)), ("e", (2, 3, 4))]
    }
    ours = shard_file(state)
    theirs = safetensors.torch.save(state, metadata={"format": "pt"})
    assert ours == theirs


def _random(dtype, shape, gen):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype == torch.complex64:
        return torch.randn(shape, generator=gen, dtype=torch.complex64)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -1000), min(info.max, 1000)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


ALL_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64,
    torch.uint16, torch.uint32, torch.uint64,
]  # fmt: skip


def test_round_trip_through_safetensors_load_all_dtypes_shapes():
    gen = torch.Generator().manual_seed(1)
    state = {}
    for i, dtype in enumerate(ALL_DTYPES):
        for shape in [(), (0,), (3,), (2, 5), (1, 0, 2)]:
            state[f"t{i}.{dtype}.{len(shape)}.{'x'.join(map(str, shape))}"] = _random(dtype, shape, gen)
    loaded = safetensors.torch.load(shard_file(state))
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


def test_mixed_widths_are_aligned_and_keep_input_order_per_width():
    state = {
        "i8": torch.ones(3, dtype=torch.int8),
        "f32": torch.ones(3),
        "bf16": torch.ones(5, dtype=torch.bfloat16),
        "f64": torch.ones(1, dtype=torch.float64),
        "u8": torch.ones(1, dtype=torch.uint8),
        "i32": torch.ones(2, dtype=torch.int32),
    }
    data = shard_file(state)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    names = [k for k in header if k != "__metadata__"]
    assert names == ["f64", "f32", "i32", "bf16", "i8", "u8"]
    for name in names:
        begin, _ = header[name]["data_offsets"]
        assert (8 + n + begin) % state[name].element_size() == 0
    loaded = safetensors.torch.load(data)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)


def test_load_file_on_written_shards(tmp_path):
    gen = torch.Generator().manual_seed(2)
    state = {f"layer.{i}.weight": torch.randn(256, 300, generator=gen) for i in range(6)}
    state["layer.0.weight"] = state["layer.0.weight"].to(torch.bfloat16)
    plan = plan_shards(state, ShardOptions(max_shard_bytes=1 << 20))
    assert plan.shard_count > 1
    for shard in plan.shards:
        path = tmp_path / shard.filename
        with open(path, "wb") as f:
            for piece in iter_shard_bytes(plan, shard.index, state, chunk_bytes=65536):
                f.write(piece)
        assert path.stat().st_size == shard.size
        loaded = safetensors.torch.load_file(path)
        assert set(loaded) == set(shard.names)
        for name in shard.names:
            assert torch.equal(loaded[name], state[name])
    index = plan.hf_index()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())


def test_unicode_and_quote_names_round_trip():
    state = {'héllo "w"\\x': torch.ones(2), "\u65e5\u672c": torch.zeros(1), "tab\tname": torch.ones(1)}
    data = shard_file(dict(sorted(state.items())))  # one dtype, name order: the library's layout
    assert data == safetensors.torch.save(state, metadata={"format": "pt"})
    loaded = safetensors.torch.load(data)
    assert set(loaded) == set(state)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("fixture", ["bridge_gpt_tied_rope_fp32", "mlm_gpt"])
def test_real_model_state_dicts(fixture, tmp_path):
    # The upstream loader's state dict of each fixture, as saved by the fixture generator.
    state = safetensors.torch.load_file(FIXTURES / fixture / "reference_state_dict.safetensors")
    ordered = dict(sorted(state.items()))
    assert shard_file(ordered) == safetensors.torch.save(ordered, metadata={"format": "pt"})
    plan = plan_shards(ordered, ShardOptions(dtype=torch.bfloat16, keys=["model.decoder.layers.0.", "model.embedding"]))
    assert plan.tensors and all(n.startswith(("model.decoder.layers.0.", "model.embedding")) for n in plan.tensors)
    loaded = safetensors.torch.load(shard_file(ordered, plan.options))
    assert set(loaded) == set(plan.tensors)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, ordered[name].to(torch.bfloat16)), name
