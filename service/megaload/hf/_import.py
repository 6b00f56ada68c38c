"""The same tables read the other way: Hugging Face tensors -> Megatron tensors.

:func:`mcore_plan` groups a view's Hugging Face tensors by the Megatron tensor they are parts
of and says how to merge them (q/k/v interleaved per query group, ``[gate; up]``, vocabulary
rows padded with zeros). Megatron names are the local layer spec's, with the ``model.`` prefix,
as :func:`megaload.checkpoint.model_state_dict` spells them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import UnmappableModelError
from ._transforms import Dims, Transform

if TYPE_CHECKING:
    from ._view import HFView

__all__ = ["MegatronTensor", "mcore_plan", "import_tensors"]

_PREFIX = "model."
# Hugging Face tensors that carry nothing a Megatron model holds (old checkpoints saved them).
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class MegatronTensor:
    """One Megatron tensor made of Hugging Face tensors: ``sources`` (HF names) are the
    ``parts`` of ``transform`` in order; :meth:`build` merges them (a new tensor)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    sources: tuple[str, ...]
    parts: tuple[str, ...] = field(repr=False)
    transform: Transform = field(repr=False)
    dims: Dims = field(repr=False)
    rows: int | None = field(default=None, repr=False)

    def build(self, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(tensors) != len(self.sources):
            raise ValueError(f"{self.name} is built from {len(self.sources)} tensor(s), got {len(tensors)}")
        out = self.transform.merge(dict(zip(self.parts, tensors)), self.dims, rows=self.rows)
        if tuple(out.shape) != self.shape:
            raise ValueError(f"{self.name}: built {tuple(out.shape)}, planned {self.shape}")
        return out


def _spec(value: Any) -> tuple[tuple[int, ...], torch.dtype]:
    from ._view import _spec_of

    return _spec_of(value)


def mcore_plan(view: HFView, hf_specs: Mapping[str, Any], *, padded_vocab_size: int | None = None) -> dict[str, MegatronTensor]:
    """Megatron name -> :class:`MegatronTensor` for a Hugging Face state dict described by
    ``hf_specs`` (name -> tensor, ``(shape, dtype)`` or TensorSpec). ``padded_vocab_size`` is
    the embedding's row count in the Megatron model (default: the true vocabulary).

    Raises UnmappableModelError naming the HF tensor that is missing, has a shape the config
    contradicts, or is not part of this architecture.
    """
    dims = view.dims
    sizes = dict(view.arch.dim_sizes(view.facts))
    rows = padded_vocab_size if padded_vocab_size is not None else view.facts.vocab_size
    if rows < view.facts.vocab_size:
        raise UnmappableModelError(
            f"padded_vocab_size {rows} is smaller than the vocabulary ({view.facts.vocab_size})", field="vocab_size"
        )
    sizes["vocab"] = rows
    groups: dict[tuple, dict[str, Any]] = {}
    for hf_name, source, part, at in view.arch.entries(view.facts):
        token = (source, tuple(sorted(at.items())))
        group = groups.setdefault(token, {"source": source, "at": at, "parts": {}})
        group["parts"][part] = hf_name
    plan: dict[str, MegatronTensor] = {}
    used: set[str] = set()
    for group in groups.values():
        source, at = group["source"], group["at"]
        name = _PREFIX + source.names[0].format(**at)
        shape = tuple(sizes[d] for d in source.dims)
        dtype = None
        for part in source.transform.parts:
            hf_name = group["parts"][part]
            if hf_name not in hf_specs:
                raise UnmappableModelError(
                    f"{view.architecture}: Hugging Face tensor {hf_name!r} is missing (part {part or 'all'} of {name})",
                    field=hf_name, architecture=view.architecture,
                )
            got_shape, got_dtype = _spec(hf_specs[hf_name])
            want = source.transform.part_shape(shape, part, dims)
            if got_shape != want:
                raise UnmappableModelError(
                    f"{view.architecture}: Hugging Face tensor {hf_name!r} is {list(got_shape)}, the config says {list(want)}",
                    field=hf_name, architecture=view.architecture,
                )
            if dtype is not None and got_dtype != dtype:
                raise UnmappableModelError(
                    f"{view.architecture}: the parts of {name} differ in dtype ({dtype}, {got_dtype})",
                    field=hf_name, architecture=view.architecture,
                )
            dtype = got_dtype
            used.add(hf_name)
        plan[name] = MegatronTensor(
            name=name,
            shape=shape,
            dtype=dtype,
            sources=tuple(group["parts"][p] for p in source.transform.parts),
            parts=source.transform.parts,
            transform=source.transform,
            dims=dims,
            rows=rows if source.dims[0] == "vocab" else None,
        )
    leftover = [k for k in hf_specs if k not in used and not _IGNORED.match(k)]
    if view.facts.tied_embeddings and "lm_head.weight" in leftover:
        leftover.remove("lm_head.weight")  # some tied checkpoints carry the tied copy
    if leftover:
        raise UnmappableModelError(
            f"{view.architecture}: Hugging Face tensor {leftover[0]!r} has no Megatron counterpart"
            + (f" ({len(leftover) - 1} more)" if len(leftover) > 1 else ""),
            field=leftover[0], architecture=view.architecture,
        )
    return plan


def import_tensors(view: HFView, hf_tensors: Mapping[str, torch.Tensor], *,
                   padded_vocab_size: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Megatron name, tensor), each merged when reached."""
    plan = mcore_plan(view, hf_tensors, padded_vocab_size=padded_vocab_size)
    for name, spec in plan.items():
        yield name, spec.build([hf_tensors[s] for s in spec.sources])
