"""Resident models seen as the Hugging Face models they correspond to.

The mapping itself is the library's (:mod:`megaload.hf`); this module applies it to the
registry's entries. Always while holding a read lease on the entry::

    hf = await models.get(entry)       # HFModel; UnmappableModelError (422) when no HF model fits
    hf.view.config_json                # config.json, generation_config.json
    hf.tensors                         # HFTensors: HF name -> spec, in HF order; fetch builds one
    hf.tokenizer_files                 # file name -> path of the tokenizer files it ships

Order of work for one model (once per model id and load; the result, a failure included, is
kept until the model leaves the registry)::

    engine command hf_view             load_model_config + load_tokenizer + hf_view (worker thread)
    tensor_plan(specs of the entry)    names, shapes, dtypes only (a worker thread off the loop)
    tokenizer files                    found as load_tokenizer finds them, kept only inside
                                       the checkpoint roots

:class:`HFTensors` is a :class:`~megaload.streaming.LazyTensors`: the planner takes its specs,
and the writer and the checksums fetch one HF tensor when they reach it and drop it once its
bytes are out. What they fetch is always a view of the model's own memory
(:meth:`HFTensors.fetch_rows`): q/k/v of several query groups are strided slices of the fused
QKV, which the writer reads in bounded runs, so no HF tensor is ever copied whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import torch

from .engine.commands import HFView
from .per_model import PerModel
from .streaming import LazyTensors, TensorSpec

if TYPE_CHECKING:
    from .engine import Engine
    from .paths import PathPolicy
    from .registry import ModelEntry, Registry

__all__ = ["HFModels", "HFModel", "HFTensors", "megatron_specs"]

logger = logging.getLogger(__name__)

_EXTRA_STATE = "_extra_state"


class HFTensors(LazyTensors):
    """HF name -> :class:`TensorSpec` of a model's Hugging Face tensors; :meth:`fetch` builds
    one from the model's tensors (``source``: the entry's state dict, itself lazy for a model
    split over ranks). Safe to share between streams: it holds no state per stream, except,
    for a lazy source, the last source tensors each thread fetched (q, k and v come from one
    fused tensor: it is gathered once for the three)."""

    def __init__(self, plan: Mapping[str, Any], source: Mapping[str, Any]) -> None:
        self._plan = dict(plan)
        self._source = source
        self._specs = MappingProxyType({name: TensorSpec(t.shape, t.dtype) for name, t in self._plan.items()})
        self._recent = threading.local()

    @property
    def specs(self) -> Mapping[str, TensorSpec]:
        return self._specs

    def sources(self, name: str) -> tuple[str, ...]:
        """The model's tensors ``name`` is built from."""
        return tuple(self._plan[name].sources)

    def fetch(self, name: str) -> torch.Tensor:
        target = self._plan[name]
        return target.build([self._read(key) for key in target.sources])

    def fetch_rows(self, name: str) -> torch.Tensor:
        """The HF tensor as a view of the model's memory (q/k/v of several query groups:
        the strided per-group slices), which the writer streams in bounded runs: no copy of
        the whole tensor is made."""
        target = self._plan[name]
        return target.rows([self._read(key) for key in target.sources])

    def _read(self, key: str) -> torch.Tensor:
        source = self._source
        if not isinstance(source, LazyTensors):
            return source[key].detach()
        recent = getattr(self._recent, "tensors", None)
        if recent is not None and key in recent:
            return recent[key]
        tensor = source.fetch(key)
        self._recent.tensors = {key: tensor}
        return tensor


@dataclass(frozen=True, eq=False)
class HFModel:
    """The Hugging Face view of one load of one model."""

    model_id: str
    loaded_at: datetime
    view: Any  # megaload.hf.HFView
    tensors: HFTensors
    tokenizer_files: Mapping[str, Path]

    @property
    def architecture(self) -> str:
        return self.view.architecture


def megatron_specs(state_dict: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the tensors of a state dict (tensors or specs), leaving out
    extra state and anything that is not a tensor."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or name.endswith(_EXTRA_STATE):
            continue
        dtype = getattr(value, "dtype", None)
        if isinstance(dtype, torch.dtype) and hasattr(value, "shape"):
            out[name] = (tuple(int(d) for d in value.shape), dtype)
    return out


class HFModels:
    """See the module docstring. One per runtime; used from the event loop only."""

    def __init__(self, engine: Engine, registry: Registry, paths: PathPolicy) -> None:
        self.engine = engine
        self.registry = registry
        self.paths = paths
        self._models: PerModel[HFModel] = PerModel(registry, self._make, name="hf-view")

    async def get(self, entry: ModelEntry) -> HFModel:
        """The HF view of ``entry`` (the caller holds a lease); raises what making it raised."""
        return await self._models.get(entry)

    async def _make(self, entry: ModelEntry) -> HFModel:
        view, found = await self.engine.run(HFView(path=entry.spec.iteration_dir, dtype=entry.spec.dtype))
        tensors = await anyio.to_thread.run_sync(_plan_tensors, view, entry.state_dict)
        return HFModel(
            model_id=entry.id,
            loaded_at=entry.loaded_at,
            view=view,
            tensors=tensors,
            tokenizer_files=MappingProxyType(self._inside_roots(found)),
        )

    def _inside_roots(self, files: Mapping[str, str]) -> dict[str, Path]:
        kept: dict[str, Path] = {}
        for name, raw in files.items():
            try:
                kept[name] = self.paths.ensure_inside_checkpoint_roots(Path(raw), field="tokenizer")
            except PermissionError:
                logger.warning("tokenizer file %s resolves outside the checkpoint roots; not served", raw)
        return kept


def _plan_tensors(view: Any, state_dict: Mapping[str, Any]) -> HFTensors:
    plan = view.tensor_plan(megatron_specs(state_dict))
    return HFTensors(plan, state_dict)
