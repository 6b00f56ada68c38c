"""The Hugging Face tensors of a view as :class:`megaload.streaming.LazyTensors`.

The streaming writer asks for one tensor at a time (:meth:`HFLazyTensors.fetch_rows`): always a
view of the Megatron tensors, q/k/v of several query groups as strided slices that it reads a
bounded run at a time, so no HF tensor is copied whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..streaming import LazyTensors, TensorSpec
from ._view import HFTensor

__all__ = ["HFLazyTensors"]


class HFLazyTensors(LazyTensors):
    """HF name -> TensorSpec, in save_pretrained's order; :meth:`fetch` builds the tensor."""

    def __init__(self, plan: Mapping[str, HFTensor], mcore_tensors: Mapping[str, torch.Tensor]) -> None:
        self.plan = dict(plan)
        self._mcore = mcore_tensors
        self._specs = {name: TensorSpec(t.shape, t.dtype) for name, t in self.plan.items()}

    @property
    def specs(self) -> Mapping[str, TensorSpec]:
        return self._specs

    def fetch(self, name: str) -> torch.Tensor:
        spec = self.plan[name]
        return spec.build([self._mcore[s] for s in spec.sources])

    def fetch_rows(self, name: str) -> torch.Tensor:
        """What the writer streams: a view of the Megatron tensor, never a copy (q/k/v of
        several query groups as their strided per-group slices, read a bounded run at a time)."""
        spec = self.plan[name]
        return spec.rows([self._mcore[s] for s in spec.sources])
