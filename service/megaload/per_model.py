"""Values derived from a resident model, made once per model and load.

The Hugging Face view of a model (:mod:`.hf_models`) and its Hub repository (:mod:`.hub_repos`)
are each made once per model id and load time, by one asyncio task every caller awaits
(shielded: a caller that goes away does not cancel the others' work). A failure that is the
checkpoint's (a :class:`~megaload.checkpoint.CheckpointError`, e.g. no HF model fits) is kept
like a value until the model leaves the registry; any other failure is dropped, so the next
caller tries again. Entries of models no longer resident are dropped when a new one is made.
Used from the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .registry import ModelEntry, Registry

__all__ = ["PerModel"]

T = TypeVar("T")
_Key = tuple[str, datetime]


class PerModel(Generic[T]):
    def __init__(self, registry: Registry, make: Callable[[ModelEntry], Awaitable[T]], *, name: str) -> None:
        self.registry = registry
        self._make = make
        self._name = name
        self._made: dict[_Key, asyncio.Task[T]] = {}

    async def get(self, entry: ModelEntry) -> T:
        """The value for ``entry`` (the caller holds a lease on it); raises what making it raised."""
        key = (entry.id, entry.loaded_at)
        task = self._made.get(key)
        if task is None:
            self._drop_stale()
            task = self._made[key] = asyncio.create_task(self._make(entry), name=f"{self._name}-{entry.id}")
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    def _settle(self, key: _Key, task: asyncio.Task[T]) -> None:
        from .checkpoint import CheckpointError

        # retrieved here, so a failure no caller stayed for is not reported as never seen
        error = None if task.cancelled() else task.exception()
        if (task.cancelled() or (error is not None and not isinstance(error, CheckpointError))) and (
            self._made.get(key) is task
        ):
            del self._made[key]  # not the checkpoint's fault: the next caller tries again

    def _drop_stale(self) -> None:
        resident = {(e.id, e.loaded_at) for e in self.registry.list()}
        for key in [k for k in self._made if k not in resident]:
            del self._made[key]
