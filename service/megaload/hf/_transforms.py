"""The named tensor transforms between Megatron's fused layouts and Hugging Face's split ones.

Each transform relates one Megatron tensor to one or more Hugging Face tensors (its *parts*)
and works both ways: :meth:`Transform.part` cuts one part out of the Megatron tensor (export),
:meth:`Transform.merge` puts the parts back together (import). Global torch_dist tensors are
already the tensor-parallel size 1 layout, so nothing here knows about tensor parallelism.

- ``copy``: the same tensor under another name.
- ``vocab``: embedding and output rows; rows past the true vocabulary (padding) are dropped on
  export and filled with zeros on import.
- ``qkv``: Megatron's ``linear_qkv`` interleaves per query group, ``[q_0 .. q_{r-1}, k, v]`` for
  each of the ``ng`` groups (``r = nq / ng`` query heads per group), each block ``head_dim``
  rows: viewed as ``(ng, r + 2, head_dim, ...)`` q is ``[:, :r]``, k ``[:, r]``, v ``[:, r + 1]``.
  Works for weights (``[rows, hidden]``) and biases (``[rows]``) alike.
- ``glu``: a gated ``linear_fc1`` is ``[gate; up]`` along the rows.

A part is a view of the Megatron tensor when its elements are contiguous there (``copy``,
``vocab``, ``glu``, and q/k/v with a single query group); otherwise (q/k/v of several groups)
it is a contiguous copy of that one tensor, made when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["Transform", "Dims", "COPY", "VOCAB", "QKV", "GLU", "TRANSFORMS"]


@dataclass(frozen=True)
class Dims:
    """The sizes transforms need: attention layout and the vocabulary to keep."""

    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


class Transform:
    """One Megatron tensor <-> ``parts`` Hugging Face tensors (a single unnamed part: ``("",)``)."""

    name: str = ""
    parts: tuple[str, ...] = ("",)

    def part_shape(self, shape: tuple[int, ...], part: str, dims: Dims) -> tuple[int, ...]:
        """Shape of ``part`` cut from a Megatron tensor of ``shape``."""
        raise NotImplementedError

    def part(self, tensor: torch.Tensor, part: str, dims: Dims) -> torch.Tensor:
        """``part`` of the Megatron tensor, contiguous: a view when it can be one."""
        raise NotImplementedError

    def part_rows(self, tensor: torch.Tensor, part: str, dims: Dims) -> torch.Tensor:
        """``part``'s elements in row-major order as a view of the Megatron tensor, never a
        copy; its shape may differ from :meth:`part_shape` (q/k/v of several query groups:
        ``(ng, heads, head_dim, ...)``). What a writer streams in bounded runs."""
        return self.part(tensor, part, dims)

    def merged_shape(self, shapes: Mapping[str, tuple[int, ...]], dims: Dims, rows: int | None = None) -> tuple[int, ...]:
        """Shape of the Megatron tensor made of parts of ``shapes`` (``rows``: padded vocabulary)."""
        raise NotImplementedError

    def merge(self, parts: Mapping[str, torch.Tensor], dims: Dims, rows: int | None = None) -> torch.Tensor:
        """The Megatron tensor made of ``parts`` (a new tensor)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<transform {self.name}>"


class _Copy(Transform):
    name = "copy"

    def part_shape(self, shape, part, dims):
        return tuple(shape)

    def part(self, tensor, part, dims):
        return tensor if tensor.is_contiguous() else tensor.contiguous()

    def merged_shape(self, shapes, dims, rows=None):
        return tuple(shapes[""])

    def merge(self, parts, dims, rows=None):
        return parts[""].clone()


class _Vocab(Transform):
    name = "vocab"

    def part_shape(self, shape, part, dims):
        return (dims.vocab_size, *shape[1:])

    def part(self, tensor, part, dims):
        rows = tensor[: dims.vocab_size]
        return rows if rows.is_contiguous() else rows.contiguous()

    def merged_shape(self, shapes, dims, rows=None):
        shape = shapes[""]
        return (rows if rows is not None else shape[0], *shape[1:])

    def merge(self, parts, dims, rows=None):
        kept = parts[""]
        total = rows if rows is not None else kept.shape[0]
        out = torch.zeros((total, *kept.shape[1:]), dtype=kept.dtype, device=kept.device)
        out[: kept.shape[0]] = kept
        return out


class _QKV(Transform):
    name = "qkv"
    parts = ("q", "k", "v")

    def part_shape(self, shape, part, dims):
        heads = dims.num_attention_heads if part == "q" else dims.num_query_groups
        return (heads * dims.head_dim, *shape[1:])

    def _grouped(self, tensor: torch.Tensor, dims: Dims) -> torch.Tensor:
        return tensor.view(dims.num_query_groups, dims.heads_per_group + 2, dims.head_dim, *tensor.shape[1:])

    def part_rows(self, tensor, part, dims):
        grouped = self._grouped(tensor, dims)
        r = dims.heads_per_group
        if part == "q":
            return grouped[:, :r]
        if part == "k":
            return grouped[:, r : r + 1]
        if part == "v":
            return grouped[:, r + 1 : r + 2]
        raise KeyError(part)

    def part(self, tensor, part, dims):
        # reshape is a view when the groups are adjacent in memory (one group), else a copy.
        return self.part_rows(tensor, part, dims).reshape(self.part_shape(tuple(tensor.shape), part, dims))

    def merged_shape(self, shapes, dims, rows=None):
        rest = shapes["q"][1:]
        return ((dims.num_attention_heads + 2 * dims.num_query_groups) * dims.head_dim, *rest)

    def merge(self, parts, dims, rows=None):
        ng, d = dims.num_query_groups, dims.head_dim
        q = parts["q"].reshape(ng, dims.heads_per_group, d, *parts["q"].shape[1:])
        k = parts["k"].reshape(ng, 1, d, *parts["k"].shape[1:])
        v = parts["v"].reshape(ng, 1, d, *parts["v"].shape[1:])
        merged = torch.cat((q, k, v), dim=1)
        return merged.reshape(self.merged_shape({"q": tuple(parts["q"].shape)}, dims))


class _GLU(Transform):
    name = "glu"
    parts = ("gate", "up")

    def part_shape(self, shape, part, dims):
        return (shape[0] // 2, *shape[1:])

    def part(self, tensor, part, dims):
        half = tensor.shape[0] // 2
        if part == "gate":
            piece = tensor[:half]
        elif part == "up":
            piece = tensor[half:]
        else:
            raise KeyError(part)
        return piece if piece.is_contiguous() else piece.contiguous()

    def merged_shape(self, shapes, dims, rows=None):
        gate = shapes["gate"]
        return (2 * gate[0], *gate[1:])

    def merge(self, parts, dims, rows=None):
        return torch.cat((parts["gate"], parts["up"]), dim=0)


COPY: Transform = _Copy()
VOCAB: Transform = _Vocab()
QKV: Transform = _QKV()
GLU: Transform = _GLU()
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (COPY, VOCAB, QKV, GLU)}
