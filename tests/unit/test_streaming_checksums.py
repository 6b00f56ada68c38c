"""Per-tensor checksums: xxh3_64 of each tensor's bytes as they go on the wire."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import xxhash

from megaload.streaming import (
    CHECKSUM_ALGORITHM,
    PlanMismatchError,
    ShardOptions,
    compute_checksums,
    fill_checksums,
    iter_shard_bytes,
    plan_shards,
)


def reference_digest(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> str:
    t = tensor.detach().contiguous()
    if dtype is not None:
        t = t.to(dtype)
    return xxhash.xxh3_64_hexdigest(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def state():
    gen = torch.Generator().manual_seed(8)
    return {
        "w": torch.randn(300, 70, generator=gen),
        "t": torch.randn(50, 40, generator=gen).t(),
        "b": torch.randn(33, generator=gen).to(torch.bfloat16),
        "ids": torch.arange(100),
        "s": torch.tensor(1.0),
        "e": torch.zeros(0),
        "x": None,
    }


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_bytes", [16, 1000, 1 << 22])
def test_checksums_match_xxhash_of_wire_bytes(dtype, chunk_bytes):
    s = state()
    plan = plan_shards(s, ShardOptions(dtype=dtype))
    sums = compute_checksums(plan, s, chunk_bytes=chunk_bytes)
    assert list(sums) == list(plan.tensors)
    for name, digest in sums.items():
        target = dtype if dtype is not None and s[name].is_floating_point() else None
        assert digest == reference_digest(s[name], target), name
    assert sums["e"] == xxhash.xxh3_64_hexdigest(b"")
    assert all(len(d) == 16 and int(d, 16) >= 0 for d in sums.values())


def test_fill_checksums_returns_a_new_plan_and_the_index_lists_them():
    s = state()
    plan = plan_shards(s)
    assert plan.checksums is None and not plan.has_checksums
    filled = fill_checksums(plan, s)
    assert plan.checksums is None  # the original is unchanged
    assert filled.checksums == compute_checksums(plan, s)
    body = filled.to_dict()
    assert body["checksum_algorithm"] == CHECKSUM_ALGORITHM == "xxh3_64"
    assert body["checksums"] == filled.checksums
    assert [sh.header for sh in filled.shards] == [sh.header for sh in plan.shards]
    models = pytest.importorskip("megaload_client.types")
    assert models.StateDictIndex.model_validate(body).checksums == filled.checksums


def test_checksums_verify_what_a_client_receives():
    s = state()
    plan = fill_checksums(plan_shards(s, ShardOptions(dtype=torch.bfloat16)), s)
    data = b"".join(bytes(p) for p in iter_shard_bytes(plan, 0, s, chunk_bytes=512))
    received = safetensors.torch.load(data)
    for name, tensor in received.items():
        assert xxhash.xxh3_64_hexdigest(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()) == plan.checksums[name]


def test_checksums_differ_when_data_differs():
    s = state()
    plan = plan_shards(s)
    before = compute_checksums(plan, s)
    s["w"] = s["w"].clone()
    s["w"][17, 3] += 1
    after = compute_checksums(plan, s)
    assert before["w"] != after["w"] and before["b"] == after["b"]


def test_missing_tensor_raises_plan_mismatch():
    s = state()
    plan = plan_shards(s)
    del s["b"]
    with pytest.raises(PlanMismatchError):
        compute_checksums(plan, s)


def test_with_checksums_needs_every_name():
    s = state()
    plan = plan_shards(s)
    partial = dict(list(compute_checksums(plan, s).items())[:-1])
    with pytest.raises(KeyError):
        plan.with_checksums(partial)
