"""Tensors read only when their bytes are needed: :class:`LazyTensors`.

A plan needs names, shapes and dtypes; the writer and the checksums need the data of one
tensor at a time. A :class:`LazyTensors` is a mapping name -> :class:`TensorSpec` (so the
planner takes it as it is) plus :meth:`~LazyTensors.fetch`, which produces a tensor's data.
:func:`~megaload.streaming.iter_shard_bytes` and :func:`~megaload.streaming.compute_checksums`
check every planned spec before the first byte, then fetch each tensor when they reach it
(:meth:`~LazyTensors.fetch_rows`) and drop it once its bytes are out, so at most one fetched
tensor is alive per stream. A model split over several processes implements ``fetch`` by
gathering the tensor's parts; a view whose tensors are strided slices of others (q/k/v cut
from a fused QKV) implements ``fetch_rows`` too, handing the writer the strided view itself,
which it streams in bounded runs instead of a whole contiguous copy.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping

import torch

from ._errors import PlanMismatchError
from ._plan import TensorEntry, TensorSpec

__all__ = ["LazyTensors", "check_spec"]


class LazyTensors(Mapping[str, TensorSpec], abc.ABC):
    """A mapping name -> :class:`TensorSpec` whose data :meth:`fetch` produces on demand."""

    @abc.abstractmethod
    def fetch(self, name: str) -> torch.Tensor:
        """The data of ``name``, of the spec's shape and dtype. May block; called from the
        thread that iterates a stream, never from an event loop."""

    def fetch_rows(self, name: str) -> torch.Tensor:
        """The data of ``name`` as the stream reads it: its elements in row-major order, as a
        tensor of the spec's dtype and number of elements whose shape may differ from the
        spec's (a strided view where the spec's shape would need a copy). By default
        :meth:`fetch`."""
        return self.fetch(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, name: str) -> TensorSpec:
        return self.specs[name]

    @property
    @abc.abstractmethod
    def specs(self) -> Mapping[str, TensorSpec]:
        """Name -> spec, in stream order."""


def check_spec(entry: TensorEntry, tensors: LazyTensors) -> None:
    """:class:`PlanMismatchError` unless ``tensors`` still describes ``entry`` as planned."""
    spec = tensors.specs.get(entry.name)
    if spec is None:
        raise PlanMismatchError(f"planned tensor {entry.name!r} is not in the mapping", name=entry.name)
    if tuple(spec.shape) != entry.shape or spec.dtype != entry.source_dtype:
        raise PlanMismatchError(
            f"tensor {entry.name!r} is {spec.dtype} {list(spec.shape)}, "
            f"planned as {entry.source_dtype} {list(entry.shape)}",
            name=entry.name,
        )
