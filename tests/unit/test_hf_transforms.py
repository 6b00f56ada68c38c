"""The named transforms between Megatron's fused tensors and Hugging Face's split ones.

Expected layouts are built here row by row from the layout megatron-core documents (q/k/v
interleaved per query group, fc1 = [gate; up]), not with the transforms' own ``merge``; the
forward checks in tests/compat/test_hf_forward.py hold the transforms against transformers'
and megatron-core's models.
"""

from __future__ import annotations

import pytest
import torch

from megaload.hf import COPY, GLU, QKV, TRANSFORMS, VOCAB, Dims, HFTensor


def _labelled_rows(rows: int, cols: int | None) -> torch.Tensor:
    """Row r holds r (and its column index / 1000), so any misplaced row shows."""
    base = torch.arange(rows, dtype=torch.float64)
    if cols is None:
        return base
    return base[:, None] + torch.arange(cols, dtype=torch.float64)[None] / 1000


def _fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int, d: int) -> torch.Tensor:
    """megatron-core's linear_qkv rows: for each query group, its query heads, then its key head,
    then its value head (each ``d`` rows)."""
    per = heads // groups
    blocks = []
    for g in range(groups):
        for h in range(per):
            blocks.append(q[(g * per + h) * d : (g * per + h + 1) * d])
        blocks.append(k[g * d : (g + 1) * d])
        blocks.append(v[g * d : (g + 1) * d])
    return torch.cat(blocks)


@pytest.mark.parametrize("heads, groups", [(4, 1), (4, 2), (4, 4), (8, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_qkv_split_per_query_group(heads, groups, bias):
    d, hidden = 3, None if bias else 5
    dims = Dims(num_attention_heads=heads, num_query_groups=groups, head_dim=d, vocab_size=1)
    q = _labelled_rows(heads * d, hidden)
    k = _labelled_rows(groups * d, hidden) + 1000
    v = _labelled_rows(groups * d, hidden) + 2000
    fused = _fused_qkv(q, k, v, heads, groups, d)
    for name, want in (("q", q), ("k", k), ("v", v)):
        got = QKV.part(fused, name, dims)
        assert torch.equal(got, want), name
        assert got.is_contiguous()
        assert QKV.part_shape(tuple(fused.shape), name, dims) == tuple(want.shape)
    assert torch.equal(QKV.merge({"q": q, "k": k, "v": v}, dims), fused)
    assert QKV.merged_shape({"q": tuple(q.shape)}, dims) == tuple(fused.shape)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_qkv_parts_are_views_for_one_group_and_copies_for_several():
    one = Dims(num_attention_heads=4, num_query_groups=1, head_dim=2, vocab_size=1)
    fused = torch.randn((4 + 2) * 2, 8)
    assert all(_shares_memory(QKV.part(fused, p, one), fused) for p in "qkv")
    two = Dims(num_attention_heads=4, num_query_groups=2, head_dim=2, vocab_size=1)
    fused = torch.randn((4 + 4) * 2, 8)
    assert not any(_shares_memory(QKV.part(fused, p, two), fused) for p in "qkv")


def test_glu_is_gate_then_up_and_views():
    gate, up = _labelled_rows(6, 4), _labelled_rows(6, 4) + 100
    fc1 = torch.cat([gate, up])
    dims = Dims(1, 1, 1, 1)
    for name, want in (("gate", gate), ("up", up)):
        got = GLU.part(fc1, name, dims)
        assert torch.equal(got, want) and _shares_memory(got, fc1) and got.is_contiguous()
    assert torch.equal(GLU.merge({"gate": gate, "up": up}, dims), fc1)
    assert GLU.parts == ("gate", "up")


def test_vocab_drops_padded_rows_as_a_view_and_pads_back_with_zeros():
    emb = _labelled_rows(128, 4)
    dims = Dims(1, 1, 1, vocab_size=100)
    kept = VOCAB.part(emb, "", dims)
    assert kept.shape == (100, 4) and torch.equal(kept, emb[:100]) and _shares_memory(kept, emb)
    back = VOCAB.merge({"": kept}, dims, rows=128)
    assert torch.equal(back[:100], emb[:100]) and not back[100:].any()
    assert VOCAB.merged_shape({"": (100, 4)}, dims, rows=128) == (128, 4)


def test_copy_passes_the_tensor_through():
    t = torch.randn(3, 4)
    assert COPY.part(t, "", Dims(1, 1, 1, 1)) is t
    assert torch.equal(COPY.part(t.t(), "", Dims(1, 1, 1, 1)), t.t())  # made contiguous


def test_transform_table_names():
    assert set(TRANSFORMS) == {"copy", "vocab", "qkv", "glu"}


def test_hftensor_build_checks_its_inputs():
    dims = Dims(num_attention_heads=4, num_query_groups=2, head_dim=2, vocab_size=1)
    spec = HFTensor("model.layers.0.self_attn.k_proj.weight", (4, 8), torch.float32, ("qkv",), QKV, "k", dims)
    fused = torch.randn(16, 8)
    assert spec.build([fused]).shape == (4, 8)
    assert spec.nbytes == 4 * 8 * 4
    with pytest.raises(ValueError, match="built from 1 tensor"):
        spec.build([fused, fused])
    with pytest.raises(ValueError, match="planned"):
        spec.build([torch.randn(16, 6)])  # a source that no longer matches the plan
