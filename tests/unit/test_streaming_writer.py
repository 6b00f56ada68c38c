"""The shard writer: byte ranges, chunk bounds, zero-copy, dtype casts and non-contiguous tensors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import safetensors.torch
import torch

from megaload.streaming import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    InvalidShardOptionsError,
    PlanMismatchError,
    RangeNotSatisfiableError,
    ShardNotFoundError,
    ShardOptions,
    iter_shard_bytes,
    plan_shards,
)


def read(plan, index, state, **kwargs) -> bytes:
    return b"".join(bytes(p) for p in iter_shard_bytes(plan, index, state, **kwargs))


def wire_bytes(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> bytes:
    """Independent reference: the whole tensor made contiguous and cast in one go."""
    t = tensor.detach().resolve_conj().resolve_neg().contiguous()
    if dtype is not None:
        t = t.to(dtype)
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def mixed_state():
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 10, generator=gen)
    return {
        "emb": torch.randn(5, 3, generator=gen),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "bf": torch.randn(7, generator=gen).to(torch.bfloat16),
        "empty": torch.zeros(0, 5),
        "ids": torch.arange(9, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "transposed": base.t(),
        "strided": base[:, ::3],
        "i8": torch.arange(-5, 6, dtype=torch.int8),
    }


# ------------------------------------------------------------------ whole files and ranges


def test_whole_file_loads_back_equal():
    state = mixed_state()
    plan = plan_shards(state)
    data = read(plan, 0, state)
    assert len(data) == plan.shards[0].size
    loaded = safetensors.torch.load(data)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("chunk_bytes", [MIN_CHUNK_BYTES, 17, 64, 4096])
def test_every_range_is_the_slice_of_the_whole_file(chunk_bytes):
    state = mixed_state()
    plan = plan_shards(state)
    whole = read(plan, 0, state)
    size = len(whole)
    # Boundaries: the header end and every tensor's first and last byte, plus neighbours.
    marks = {0, 1, size - 1, size, plan.shards[0].header_size}
    for entry in plan.tensors.values():
        marks |= {entry.file_offset, entry.file_offset + entry.nbytes}
    points = sorted({p + d for p in marks for d in (-1, 0, 1) if 0 <= p + d <= size})
    rng = random.Random(chunk_bytes)
    pairs = [(a, b) for a in points for b in points if a <= b]
    pairs += [tuple(sorted(rng.sample(range(size + 1), 2))) for _ in range(200)]
    for start, end in pairs:
        got = read(plan, 0, state, start=start, end=end, chunk_bytes=chunk_bytes)
        assert got == whole[start:end], (start, end)


def test_first_byte_last_byte_and_across_a_tensor_boundary():
    state = {"a": torch.arange(4, dtype=torch.int32), "b": torch.arange(10, 14, dtype=torch.int32)}
    plan = plan_shards(state)
    size = plan.shards[0].size
    header = plan.shards[0].header
    assert read(plan, 0, state, start=0, end=1) == header[:1]
    assert read(plan, 0, state, start=size - 1) == (13).to_bytes(4, "little")[-1:]
    b_start = plan.tensors["b"].file_offset
    got = read(plan, 0, state, start=b_start - 6, end=b_start + 5)
    assert got == wire_bytes(state["a"])[-6:] + wire_bytes(state["b"])[:5]
    assert read(plan, 0, state, start=size, end=size) == b""


@pytest.mark.parametrize(
    "start, end", [(-1, None), (0, -1), (5, 4), (0, "size+1"), ("size+1", None), (0.0, None), (True, None)]
)
def test_ranges_outside_the_file_raise_before_any_byte(start, end):
    state = {"a": torch.ones(3)}
    plan = plan_shards(state)
    size = plan.shards[0].size
    resolve = lambda v: size + 1 if v == "size+1" else v  # noqa: E731
    with pytest.raises(RangeNotSatisfiableError) as info:
        iter_shard_bytes(plan, 0, state, start=resolve(start), end=resolve(end))
    assert info.value.size == size


def test_unknown_shard_and_chunk_bounds():
    state = {"a": torch.ones(3)}
    plan = plan_shards(state)
    with pytest.raises(ShardNotFoundError):
        iter_shard_bytes(plan, 1, state)
    for bad in (MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1, 0, 1.5, None):
        with pytest.raises(InvalidShardOptionsError) as info:
            iter_shard_bytes(plan, 0, state, chunk_bytes=bad)
        assert info.value.field == "chunk_bytes"


# ------------------------------------------------------------------ chunks


@pytest.mark.parametrize("chunk_bytes", [16, 100, 1024, 1 << 16, 1 << 20])
def test_pieces_are_bounded_memoryviews_that_stay_valid(chunk_bytes):
    gen = torch.Generator().manual_seed(4)
    state = {
        "big": torch.randn(300_000, generator=gen),
        "cast_me": torch.randn(50_000, generator=gen),
        "noncontig": torch.randn(400, 300, generator=gen).t(),
        "tiny": torch.ones(3),
    }
    plan = plan_shards(state, ShardOptions(dtype=torch.float16))
    pieces = list(iter_shard_bytes(plan, 0, state, chunk_bytes=chunk_bytes))
    assert all(isinstance(p, memoryview) and p.ndim == 1 and p.itemsize == 1 for p in pieces)
    assert max(len(p) for p in pieces) <= chunk_bytes
    # Held all at once, the pieces still spell the file: no buffer was reused.
    loaded = safetensors.torch.load(b"".join(bytes(p) for p in pieces))
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor.to(torch.float16)), name


def test_small_pieces_are_gathered():
    state = {f"norm.{i}": torch.ones(4) for i in range(500)}  # header under 64 KiB
    plan = plan_shards(state)
    pieces = list(iter_shard_bytes(plan, 0, state, chunk_bytes=1 << 20))
    assert len(pieces) == 1 and len(pieces[0]) == plan.shards[0].size
    pieces = list(iter_shard_bytes(plan, 0, state, chunk_bytes=4096))
    assert all(len(p) <= 4096 for p in pieces)
    assert len(pieces) <= plan.shards[0].size // 4000 + 2


def test_contiguous_tensor_pieces_share_the_tensor_memory():
    tensor = torch.arange(1 << 18, dtype=torch.float32)  # 1 MiB
    state = {"t": tensor}
    plan = plan_shards(state)
    lo, hi = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * 4
    data_pieces = 0
    for piece in iter_shard_bytes(plan, 0, state, start=plan.tensors["t"].file_offset, chunk_bytes=1 << 16):
        address = np.frombuffer(piece, dtype=np.uint8).ctypes.data
        assert lo <= address and address + len(piece) <= hi
        data_pieces += 1
    assert data_pieces == 16


def test_early_close_stops_cleanly():
    state = {"t": torch.zeros(1 << 16)}
    plan = plan_shards(state)
    it = iter_shard_bytes(plan, 0, state, chunk_bytes=1024)
    next(it)
    next(it)
    it.close()
    with pytest.raises(StopIteration):
        next(it)


# ------------------------------------------------------------------ dtype casts


def special_floats() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    values = torch.cat(
        [
            torch.randn(4099, generator=gen) * 1e3,
            torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-45, 3.4e38, 65504.0, 65520.0]),
            # bf16 rounding ties: low 16 bits exactly 0x8000 with even and odd kept bits
            torch.tensor([0x3F808000, 0x3F818000, 0x3F80_7FFF, 0x3F80_8001], dtype=torch.int32).view(torch.float32),
        ]
    )
    return values


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn])
@pytest.mark.parametrize("chunk_bytes", [16, 1000, 1 << 20])
def test_cast_is_bit_identical_to_tensor_to(target, chunk_bytes):
    src = special_floats()
    state = {"x": src, "y": src.reshape(-1, 1)[:4000].reshape(40, 100).t()}
    plan = plan_shards(state, ShardOptions(dtype=target))
    whole = read(plan, 0, state, chunk_bytes=chunk_bytes)
    for name, tensor in state.items():
        entry = plan.tensors[name]
        got = whole[entry.file_offset : entry.file_offset + entry.nbytes]
        assert got == wire_bytes(tensor, target), name
    # a range that starts and ends inside elements
    x = plan.tensors["x"]
    part = read(plan, 0, state, start=x.file_offset + 3, end=x.file_offset + 1001, chunk_bytes=chunk_bytes)
    assert part == wire_bytes(src, target)[3:1001]


def test_upcast_bf16_to_fp32_and_integers_untouched():
    gen = torch.Generator().manual_seed(6)
    state = {"w": torch.randn(1000, generator=gen).to(torch.bfloat16), "ids": torch.arange(-50, 50)}
    plan = plan_shards(state, ShardOptions(dtype=torch.float32))
    loaded = safetensors.torch.load(read(plan, 0, state, chunk_bytes=64))
    assert loaded["w"].dtype == torch.float32 and torch.equal(loaded["w"], state["w"].float())
    assert loaded["ids"].dtype == torch.int64 and torch.equal(loaded["ids"], state["ids"])


# ------------------------------------------------------------------ non-contiguous and odd tensors


def odd_tensors():
    gen = torch.Generator().manual_seed(7)
    big = torch.randn(64, 96, generator=gen)
    return {
        "transposed": big.t(),
        "step": torch.randn(10_000, generator=gen)[::3],
        "expanded": torch.arange(5.0).expand(7, 5),
        "permuted": torch.randn(4, 5, 6, generator=gen).permute(2, 0, 1),
        "wide_rows": torch.randn(3, 5000, generator=gen)[:, ::2],  # one row is over small budgets
        "offset_view": big[3:9, 10:20],
        "conj": torch.randn(50, generator=gen, dtype=torch.complex64).conj(),
        "param": torch.nn.Parameter(torch.randn(8, 8, generator=gen)),
        "bool_t": (torch.randn(30, 20, generator=gen) > 0).t(),
        "scalar_view": big[5, 7],
    }


@pytest.mark.parametrize("chunk_bytes", [16, 256, 8192, 1 << 20])
def test_non_contiguous_and_odd_tensors(chunk_bytes):
    state = odd_tensors()
    assert not state["transposed"].is_contiguous() and state["conj"].is_conj()
    plan = plan_shards(state)
    whole = read(plan, 0, state, chunk_bytes=chunk_bytes)
    for name, tensor in state.items():
        entry = plan.tensors[name]
        assert whole[entry.file_offset : entry.file_offset + entry.nbytes] == wire_bytes(tensor), name
    rng = random.Random(chunk_bytes)
    for _ in range(100):
        start, end = sorted(rng.sample(range(len(whole) + 1), 2))
        assert read(plan, 0, state, start=start, end=end, chunk_bytes=chunk_bytes) == whole[start:end]


# ------------------------------------------------------------------ plan mismatches


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("a"),
        lambda s: s.__setitem__("a", torch.ones(4)),
        lambda s: s.__setitem__("a", torch.ones(3, dtype=torch.float64)),
        lambda s: s.__setitem__("a", torch.ones(3, device="meta")),
        lambda s: s.__setitem__("a", None),
        lambda s: s.__setitem__("a", torch.ones(3).to_sparse()),
    ],
)
def test_changed_tensors_raise_plan_mismatch_at_call_time(change):
    state = {"a": torch.ones(3), "b": torch.ones(2)}
    plan = plan_shards(state)
    change(state)
    with pytest.raises(PlanMismatchError) as info:
        iter_shard_bytes(plan, 0, state)
    assert info.value.name == "a" and "'a'" in str(info.value)


def test_plan_from_metadata_streams_the_real_tensors():
    state = mixed_state()
    meta = {n: t.to("meta") for n, t in state.items()}
    plan = plan_shards(meta, ShardOptions(dtype=torch.bfloat16))
    loaded = safetensors.torch.load(read(plan, 0, state))
    assert torch.equal(loaded["emb"], state["emb"].to(torch.bfloat16))
    assert torch.equal(loaded["ids"], state["ids"])


def test_zero_copy_pieces_are_read_only():
    tensor = torch.zeros(1 << 16)
    state = {"t": tensor}
    plan = plan_shards(state)
    pieces = list(iter_shard_bytes(plan, 0, state, chunk_bytes=1 << 14))
    assert all(p.readonly for p in pieces)
    with pytest.raises(TypeError):
        pieces[-1][0] = 1
    assert not tensor.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stream_like_their_cpu_copies():  # pragma: no cover - GPU only
    cpu = odd_tensors()
    cpu.pop("param")
    cuda = {n: t.cuda() for n, t in cpu.items()}
    cuda["transposed"] = cuda["transposed"].contiguous().t().contiguous().t()  # keep it non-contiguous
    for options in (ShardOptions(), ShardOptions(dtype=torch.bfloat16)):
        plan = plan_shards(cpu, options)
        for chunk_bytes in (16, 4096, 1 << 20):
            expected = read(plan, 0, cpu, chunk_bytes=chunk_bytes)
            assert read(plan, 0, cuda, chunk_bytes=chunk_bytes) == expected
            assert read(plan, 0, cuda, start=100, end=len(expected) - 3, chunk_bytes=chunk_bytes) == expected[100:-3]
