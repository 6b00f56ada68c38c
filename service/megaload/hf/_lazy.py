"""The Hugging Face tensors of a view as :class:`megaload.streaming.LazyTensors`.

The streaming writer asks for one tensor at a time and drops it once its bytes are out, so
the q/k/v copies exist one at a time; everything else is a view of the Megatron tensors.
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
