"""Shard plans of resident models: made once per (model, load, options), shared by requests.

The state-dict routes ask two things of :class:`ShardPlans`, always while holding a read
lease on the model's registry entry::

    plan = await plans.plan(entry, options)          # sizes, headers, ETags: no tensor data read
    body = await plans.index_json(entry, options)    # the index with per-tensor checksums, JSON

Both take ``reshard`` (what one tensor-parallel rank holds) or ``hf`` (the model's Hugging
Face tensors, :class:`~megaload.hf_models.HFTensors`) to plan another view of the model;
:func:`tensor_view` gives the stream the same view. A cached plan is keyed by the model id,
the time the entry was loaded, the options and the view, so a model evicted and loaded
again under the same id never meets the plans of its predecessor.

* Planning reads names, shapes and dtypes only. It runs in a worker thread under the caller's
  lease; two requests that miss at once both plan (cheap) and the first result is kept.
* Checksums read every tensor once (:func:`~megaload.streaming.fill_checksums`). One task per
  key computes them in a worker thread under a lease of its own, so a client that goes away
  neither cancels the work nor makes the next one repeat it; concurrent index requests for
  the same key await that one task. A failed computation is forgotten (the next request
  tries again).
* At most ``max_plans`` keys are kept (least recently used dropped first); keys of models
  that are no longer resident are dropped whenever a key is added.

The planner is handed the model's tensors plus the names of its modules' extra state
(``..._extra_state``, serialized module state that is not a weight), which it lists in the
index's ``skipped`` with the reason.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from .checkpoint import extra_state_names
from .errors import ModelNotFoundError
from .streaming import (
    LazyTensors,
    Shard,
    ShardOptions,
    ShardPlan,
    fill_checksums,
    iter_shard_bytes,
    plan_shards,
    shard_etag,
)

if TYPE_CHECKING:
    from .registry import ModelEntry, Registry

__all__ = ["ShardPlans", "ShardRead", "Reshard", "tensor_view", "shard_identity", "DEFAULT_MAX_PLANS"]

DEFAULT_MAX_PLANS = 32



@dataclass(frozen=True)
class Reshard:
    """Serve what rank ``tp_rank`` of a TP=``tp_size`` model holds (``tp_rank``/``tp_size``
    query parameters), cut from the full tensors by :func:`megaload.checkpoint.tp_slice`."""

    tp_rank: int
    tp_size: int


@dataclass(frozen=True)
class ShardRead:
    """Shard ``index`` of ``plan``, ready to answer: its ETag, and its bytes when read
    (:meth:`pieces`, from a worker thread, under the caller's lease)."""

    plan: ShardPlan
    index: int
    etag: str
    tensors: Callable[[], Mapping[str, Any]]

    @property
    def shard(self) -> Shard:
        return self.plan.shard(self.index)

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        return iter_shard_bytes(self.plan, self.index, self.tensors(), start=start, end=end)


_Key = tuple[str, datetime, ShardOptions, "Reshard | None", bool]


@dataclass
class _Slot:
    plan: ShardPlan | None = None
    index: bytes | None = None
    indexing: asyncio.Task[bytes] | None = None


class ShardPlans:
    """See the module docstring. One per service; used from the event loop only."""

    def __init__(self, registry: Registry, *, max_plans: int = DEFAULT_MAX_PLANS) -> None:
        if max_plans < 1:
            raise ValueError(f"max_plans must be at least 1, got {max_plans}")
        self.registry = registry
        self.max_plans = max_plans
        self._slots: OrderedDict[_Key, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    async def plan(
        self, entry: ModelEntry, options: ShardOptions, reshard: Reshard | None = None, hf: LazyTensors | None = None
    ) -> ShardPlan:
        """The plan of ``entry``'s state dict under ``options``. The caller holds a lease."""
        return await self._plan(self._slot(entry, options, reshard, hf), entry, options, reshard, hf)

    async def shard(
        self, entry: ModelEntry, n: int, options: ShardOptions, reshard: Reshard | None, hf: LazyTensors | None
    ) -> ShardRead:
        """Shard ``n`` of the plan (ShardNotFoundError when there is none). The caller holds a
        lease."""
        plan = await self.plan(entry, options, reshard, hf)
        plan.shard(n)
        etag = shard_etag(shard_identity(entry, reshard, hf), plan, n)
        return ShardRead(plan, n, etag, lambda: tensor_view(entry, reshard, hf))

    async def index_json(
        self, entry: ModelEntry, options: ShardOptions, reshard: Reshard | None = None, hf: LazyTensors | None = None
    ) -> bytes:
        """The state-dict index (``ShardPlan.to_index()`` with checksums) as JSON bytes. The
        caller holds a lease."""
        slot = self._slot(entry, options, reshard, hf)
        plan = await self._plan(slot, entry, options, reshard, hf)
        if slot.index is not None:
            return slot.index
        if slot.indexing is None:
            slot.indexing = asyncio.create_task(
                self._fill(entry, plan, slot, reshard, hf), name=f"checksums-{entry.id}"
            )
            slot.indexing.add_done_callback(_retrieve)
        return await asyncio.shield(slot.indexing)

    async def _plan(
        self, slot: _Slot, entry: ModelEntry, options: ShardOptions, reshard: Reshard | None, hf: LazyTensors | None
    ) -> ShardPlan:
        if slot.plan is None:
            plan = await anyio.to_thread.run_sync(_plan_entry, entry, options, reshard, hf)
            if slot.plan is None:
                slot.plan = plan
        return slot.plan

    async def _fill(
        self, entry: ModelEntry, plan: ShardPlan, slot: _Slot, reshard: Reshard | None, hf: LazyTensors | None
    ) -> bytes:
        try:
            lease = self.registry.acquire(entry.id)
        except ModelNotFoundError:
            slot.indexing = None
            raise
        try:
            if lease.entry is not entry:  # evicted and loaded again since the caller's lease
                raise ModelNotFoundError(entry.id)
            filled = await anyio.to_thread.run_sync(fill_checksums, plan, tensor_view(entry, reshard, hf))
            body = filled.to_index().model_dump_json().encode("utf-8")
        except BaseException:
            slot.indexing = None
            raise
        finally:
            lease.release()
        slot.index = body
        slot.indexing = None
        return body

    def _slot(self, entry: ModelEntry, options: ShardOptions, reshard: Reshard | None, hf: LazyTensors | None) -> _Slot:
        key = (entry.id, entry.loaded_at, options, reshard, hf is not None)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
            return slot
        self._drop_stale()
        slot = self._slots[key] = _Slot()
        while len(self._slots) > self.max_plans:
            self._slots.popitem(last=False)
        return slot

    def _drop_stale(self) -> None:
        resident = {(e.id, e.loaded_at) for e in self.registry.list()}
        for key in [k for k in self._slots if (k[0], k[1]) not in resident]:
            del self._slots[key]


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """Mark a failure as seen: every awaiter may have gone away before it came."""
    if not task.cancelled():
        task.exception()


def _plan_entry(
    entry: ModelEntry, options: ShardOptions, reshard: Reshard | None, hf: LazyTensors | None
) -> ShardPlan:
    return plan_shards(hf if hf is not None else streamable_view(entry, reshard), options)


def tensor_view(entry: ModelEntry, reshard: Reshard | None, hf: LazyTensors | None = None) -> Mapping[str, Any]:
    """What the stream reads: ``entry.state_dict`` (full tensors; for a model split over
    ranks a :class:`~megaload.streaming.LazyTensors` that gathers each when read), with
    ``reshard`` the slices one rank of that layout holds (worker thread: walks modules), or
    ``hf`` itself (the model's Hugging Face tensors, built when read)."""
    if hf is not None:
        return hf
    if reshard is None:
        return entry.state_dict
    from .checkpoint import padded_vocab_rows, partition_rules
    from .model_parallel import SlicedTensors

    loaded = entry.loaded
    directory = getattr(loaded, "directory", None)
    rules = directory.rules if directory is not None else partition_rules(loaded.model)
    return SlicedTensors(
        entry.state_dict, rules, reshard.tp_rank, reshard.tp_size, padded_vocab_rows(loaded.model, reshard.tp_size)
    )


def shard_identity(entry: ModelEntry, reshard: Reshard | None = None, hf: LazyTensors | None = None) -> str:
    """What a shard's ETag knows of the model: its id, when this copy of it was loaded, and
    the view streamed (a tensor-parallel rank's slices, or the Hugging Face tensors)."""
    identity = f"{entry.id}@{entry.loaded_at.isoformat()}"
    if reshard is not None:
        identity += f"#tp{reshard.tp_rank}of{reshard.tp_size}"
    if hf is not None:
        identity += "#hf"
    return identity


def streamable_view(entry: ModelEntry, reshard: Reshard | None = None) -> Mapping[str, Any]:
    """``entry.state_dict`` (tensors, in the model's order) followed by the names of its
    modules' extra state, mapped to ``None`` for the planner to list as skipped. Lazy views
    (models split over ranks, ``reshard`` slices) are planned as they are, without the
    extra-state names."""
    tensors = tensor_view(entry, reshard)
    if isinstance(tensors, LazyTensors):
        return tensors
    extra = [name for name in extra_state_names(getattr(entry.loaded, "model", None)) if name not in tensors]
    if not extra:
        return tensors
    view = dict(tensors)
    view.update(dict.fromkeys(extra))
    return view
