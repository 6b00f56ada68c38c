"""Tensor-parallel split rules: assembling the ranks' parts and cutting one rank's slice."""

from __future__ import annotations

import pytest
import torch

from megaload.checkpoint import (
    IncompatibleConfigError,
    PartitionRule,
    assemble_full,
    tp_slice,
    tp_slice_shape,
)


def test_glu_parts_hold_a_slice_of_each_half_and_assemble_back():
    full = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # gate rows 0-3, up rows 4-7
    rule = PartitionRule(dim=0, glu=True)
    parts = [tp_slice(full, rule, r, 2) for r in range(2)]
    assert torch.equal(parts[0], full[[0, 1, 4, 5]]) and torch.equal(parts[1], full[[2, 3, 6, 7]])
    assert torch.equal(assemble_full(parts, rule), full)


def test_row_parallel_splits_columns():
    full = torch.arange(12).reshape(3, 4)
    rule = PartitionRule(dim=1)
    assert torch.equal(tp_slice(full, rule, 1, 2), full[:, 2:])
    assert torch.equal(assemble_full([tp_slice(full, rule, r, 2) for r in range(2)], rule), full)


def test_vocab_rows_are_padded_with_zeros_and_cut_back():
    full = torch.ones(6, 2)
    rule = PartitionRule(dim=0, vocab=True)
    parts = [tp_slice(full, rule, r, 2, rows=8) for r in range(2)]
    assert [tuple(p.shape) for p in parts] == [(4, 2), (4, 2)]
    assert not parts[1][2:].any() and parts[1][:2].all()
    assert torch.equal(assemble_full(parts, rule, rows=6), full)
    assert tp_slice_shape((6, 2), rule, 0, 2, rows=8) == (4, 2)


def test_whole_tensors_are_not_split():
    full = torch.arange(5)
    assert tp_slice(full, PartitionRule(), 1, 4) is full


@pytest.mark.parametrize(
    ("shape", "rule", "rank", "size", "field"),
    [
        ((6, 2), PartitionRule(dim=0), 0, 4, "tp_size"),
        ((8, 2), PartitionRule(dim=0, groups=2), 0, 4, "tp_size"),
        ((8, 2), PartitionRule(dim=0), 2, 2, "tp_rank"),
    ],
)
def test_impossible_splits_are_refused_naming_the_field(shape, rule, rank, size, field):
    with pytest.raises(IncompatibleConfigError) as info:
        tp_slice_shape(shape, rule, rank, size)
    assert info.value.field == field
