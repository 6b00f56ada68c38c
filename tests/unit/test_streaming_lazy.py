"""Lazy tensors in the writer and the checksums: fetched when reached, possibly as strided views.

A :class:`LazyTensors` may hand the stream a tensor's elements as a strided view of other
memory (``fetch_rows``: any shape with the planned dtype and number of elements), as the
Hugging Face view does for q/k/v cut out of a fused QKV; the bytes must be those of the
contiguous tensor, checked here against ``safetensors``' own reader.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from megaload.streaming import (
    LazyTensors,
    PlanMismatchError,
    ShardOptions,
    TensorSpec,
    compute_checksums,
    iter_shard_bytes,
    plan_shards,
)

FUSED = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).reshape(2, 5, 3, 4)  # (groups, heads + 2, dim, hidden)


def q_of(fused: torch.Tensor) -> torch.Tensor:
    """What the stream should send: the first 3 heads of each group, contiguous."""
    return fused[:, :3].reshape(2 * 3 * 3, 4)


class Strided(LazyTensors):
    """``q`` planned as ``[18, 4]``; ``fetch_rows`` gives the strided ``(2, 3, 3, 4)`` view."""

    def __init__(self, rows=None) -> None:
        self._rows = rows
        self.fetched: list[str] = []

    @property
    def specs(self):
        return {"q": TensorSpec((18, 4), torch.float32), "bias": TensorSpec((7,), torch.float32)}

    def fetch(self, name: str) -> torch.Tensor:
        return q_of(FUSED) if name == "q" else torch.ones(7)

    def fetch_rows(self, name: str) -> torch.Tensor:
        self.fetched.append(name)
        if name == "q":
            return FUSED[:, :3] if self._rows is None else self._rows
        return torch.ones(7)


@pytest.mark.parametrize("chunk_bytes", [16, 40, 1 << 20])
def test_strided_rows_stream_as_the_contiguous_tensor(chunk_bytes):
    lazy = Strided()
    plan = plan_shards(lazy, ShardOptions())
    pieces = list(iter_shard_bytes(plan, 0, lazy, chunk_bytes=chunk_bytes))
    assert all(len(p) <= chunk_bytes for p in pieces)
    got = load(b"".join(bytes(p) for p in pieces))
    assert torch.equal(got["q"], q_of(FUSED)) and torch.equal(got["bias"], torch.ones(7))
    assert compute_checksums(plan, lazy) == compute_checksums(plan, {"q": q_of(FUSED), "bias": torch.ones(7)})


def test_a_range_fetches_only_the_tensors_it_covers():
    lazy = Strided()
    plan = plan_shards(lazy, ShardOptions())
    entry = plan.tensors["q"]
    start, end = entry.file_offset + 4, entry.file_offset + entry.nbytes - 4
    body = b"".join(bytes(p) for p in iter_shard_bytes(plan, 0, lazy, start=start, end=end))
    assert body == q_of(FUSED).numpy().tobytes()[4:-4]
    assert lazy.fetched == ["q"]


@pytest.mark.parametrize(
    "rows, says",
    [
        (FUSED[:, :2], "planned as torch.float32 \\[18, 4\\]"),  # too few elements
        (FUSED[:, :3].double(), "float64"),
        ("not a tensor", "str"),
    ],
)
def test_rows_that_contradict_the_plan_fail_before_their_bytes(rows, says):
    lazy = Strided(rows)
    plan = plan_shards(lazy, ShardOptions())
    pieces = iter_shard_bytes(plan, 0, lazy)
    with pytest.raises(PlanMismatchError, match=says):
        list(pieces)
    with pytest.raises(PlanMismatchError, match=says):
        compute_checksums(plan, lazy)
