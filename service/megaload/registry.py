"""The resident model cache: entries, byte budget, LRU eviction, pinning, single-flight loads
and read leases.

Everything here runs on the event loop (no locks beyond one ``asyncio.Condition``); the heavy
work is delegated to a :class:`ModelLoader` (the engine). A load goes::

    load(spec)
      ├── resident and not being evicted -> (entry, created=False)
      ├── an identical load in flight    -> await it (single flight) -> (entry, False)
      └── otherwise start one:
            estimate bytes (checkpoint metadata, no weights)
            reserve them:
              refuse with InsufficientMemoryError (507) if they can never fit: more than the
                budget less the pinned resident models;
              else wait in line (first come, first served) until they fit once loads in
                progress have finished and least-recently-used unpinned models are evicted;
                evict those and wait until their memory is actually released. A load that
                waits longer than ``memory_wait_seconds`` fails with MemoryWaitTimeoutError
                (503, Retry-After); one whose every waiter has gone leaves the line.
            load, register the entry (pinned if asked), turn the reservation into resident
            bytes -> (entry, True)

Eviction removes the entry at once (no new leases, GET says 404) but releases its memory only
after every lease is returned: a stream in progress finishes first.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import InsufficientMemoryError, MemoryWaitTimeoutError, ModelNotFoundError
from .resident import Lease, LoadSpec, MemoryUsage, ModelEntry, ModelLoader, now

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Registry", "ModelEntry", "LoadSpec", "Lease", "ModelLoader", "MemoryUsage"]

logger = logging.getLogger(__name__)


# What a load is doing, as (fraction done, phase) for the progress of load jobs.
PHASES = {
    "estimating": (0.05, "estimating"),
    "reserving": (0.1, "waiting for memory"),
    "loading": (0.2, "loading"),
}


@dataclass
class _Inflight:
    task: asyncio.Task | None = None
    waiters: int = 0
    started: bool = False
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_phase: list[Callable[[float, str], None]] = field(default_factory=list)
    phase: tuple[float, str, tuple[int, int] | None] | None = None
    pin: bool = False
    waiting_for_memory: bool = False

    def set_phase(self, name: str) -> None:
        self._report((*PHASES[name], None))

    def set_read(self, done: int, total: int) -> None:
        """Bytes of the checkpoint read so far: the loading phase's share of the fraction."""
        start = PHASES["loading"][0]
        self._report((start + (1.0 - start) * done / max(1, total), PHASES["loading"][1], (done, total)))

    def _report(self, phase: tuple[float, str, tuple[int, int] | None]) -> None:
        self.phase = phase
        for cb in self.on_phase:
            cb(*phase)

    def mark_started(self) -> None:
        if self.started:
            return
        self.started = True
        callbacks, self.on_start = self.on_start, []
        for cb in callbacks:
            cb()


class Registry:
    """See the module docstring. One instance per service, used from the event loop only."""

    def __init__(
        self,
        loader: ModelLoader,
        budget_bytes: int,
        *,
        metrics: Metrics | None = None,
        memory_wait_seconds: float = 600.0,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"memory budget must be positive, got {budget_bytes}")
        self._loader = loader
        self.budget_bytes = budget_bytes
        self.memory_wait_seconds = memory_wait_seconds
        self._line: collections.deque[object] = collections.deque()  # loads waiting for memory, in order
        self._metrics = metrics
        self._entries: dict[str, ModelEntry] = {}
        self._evicting: dict[str, ModelEntry] = {}
        self._inflight: dict[str, _Inflight] = {}
        self._reserved = 0
        self._cond = asyncio.Condition()
        self._tick = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._update_gauges()

    # ------------------------------------------------------------------ queries

    def get(self, model_id: str) -> ModelEntry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        return entry

    def list(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.loaded_at)

    def memory(self) -> MemoryUsage:
        return MemoryUsage(
            budget_bytes=self.budget_bytes,
            used_bytes=self._held_bytes(),
            reserved_bytes=self._reserved,
            evictable_bytes=sum(e.size_bytes for e in self._entries.values() if not e.pinned),
        )

    def is_loading(self, model_id: str) -> bool:
        return model_id in self._inflight

    # ------------------------------------------------------------------ loading

    async def load(
        self,
        spec: LoadSpec,
        *,
        pin: bool = False,
        on_start: Callable[[], None] | None = None,
        on_phase: Callable[[float, str, tuple[int, int] | None], None] | None = None,
    ) -> tuple[ModelEntry, bool]:
        """Make ``spec`` resident; returns ``(entry, created)`` where ``created`` is True only
        for the call that started the load. ``on_start`` runs (on the loop) when the engine
        begins work on it, or at once if that already happened; ``on_phase(fraction, phase,
        read)`` at each step of the load (see :data:`PHASES`) and, while it reads the checkpoint,
        as bytes land (``read``: ``(done, total)`` bytes, else None)."""
        model_id = spec.model_id
        entry = self._entries.get(model_id)
        if entry is not None:
            self._touch(entry)
            if pin and not entry.pinned:
                entry.pinned = True
                await self._notify()  # a waiting load may now never fit
            if on_start is not None:
                on_start()
            return entry, False
        inflight = self._inflight.get(model_id)
        created = inflight is None
        if inflight is None:
            inflight = _Inflight(pin=pin)
            self._inflight[model_id] = inflight
            inflight.task = asyncio.create_task(self._run_load(spec, inflight), name=f"load-{model_id}")
        elif pin:
            inflight.pin = True
        if on_start is not None:
            if inflight.started:
                on_start()
            else:
                inflight.on_start.append(on_start)
        if on_phase is not None:
            inflight.on_phase.append(on_phase)
            if inflight.phase is not None:
                on_phase(*inflight.phase)
        inflight.waiters += 1
        try:
            entry = await asyncio.shield(inflight.task)
        except asyncio.CancelledError:
            idle = not inflight.started or inflight.waiting_for_memory
            if inflight.waiters == 1 and idle and inflight.task is not None:
                inflight.task.cancel()  # nobody else wants it and the engine is not reading it
            raise
        finally:
            inflight.waiters -= 1
        if pin:
            entry.pinned = True
        return entry, created

    async def _run_load(self, spec: LoadSpec, inflight: _Inflight) -> ModelEntry:
        model_id = spec.model_id
        try:
            previous = self._evicting.get(model_id)
            if previous is not None:  # the same id is still being released: let that finish first
                await previous._released.wait()
            def estimating() -> None:
                inflight.mark_started()
                inflight.set_phase("estimating")

            needed = await self._loader.estimate_bytes(spec.iteration_dir, spec.dtype, estimating)
            inflight.mark_started()
            inflight.set_phase("reserving")
            inflight.waiting_for_memory = True
            try:
                await self._reserve(needed)
            finally:
                inflight.waiting_for_memory = False
            try:
                loaded = await self._loader.load(
                    model_id, spec, lambda: inflight.set_phase("loading"), on_progress=inflight.set_read
                )
            except BaseException:
                async with self._cond:
                    self._reserved -= needed
                    self._cond.notify_all()
                raise
            async with self._cond:
                self._reserved -= needed
                entry = ModelEntry(
                    id=model_id, spec=spec, loaded=loaded, size_bytes=int(loaded.size_bytes), pinned=inflight.pin
                )
                self._touch(entry)
                self._entries[model_id] = entry
                self._cond.notify_all()
            return entry
        finally:
            self._inflight.pop(model_id, None)
            self._update_gauges()

    async def _reserve(self, needed: int) -> None:
        """Reserve ``needed`` bytes (see the module docstring): 507 at once if they can never
        fit, else wait in line until they can, evicting least-recently-used unpinned models."""
        ticket = object()
        reserved = False
        async with self._cond:
            self._line.append(ticket)
            try:
                async with asyncio.timeout(self.memory_wait_seconds):
                    while True:
                        self._refuse_if_never_fits(needed)
                        if self._line[0] is ticket and self._take(needed):
                            reserved = True
                            self._line.popleft()
                            self._cond.notify_all()  # the next in line may fit too
                            break
                        await self._cond.wait()
                    # the room is ours; evicted models release their memory once unleased
                    await self._cond.wait_for(lambda: self._held_bytes() + self._reserved <= self.budget_bytes)
            except BaseException as e:
                if reserved:
                    self._reserved -= needed
                if isinstance(e, TimeoutError):
                    raise MemoryWaitTimeoutError(
                        f"the model needs {needed} bytes of the {self.budget_bytes}-byte budget; they did not become "
                        f"free within {self.memory_wait_seconds:g} s (resident {self._held_bytes()}, loads in "
                        f"progress {self._reserved}, {sum(t is not ticket for t in self._line)} other loads waiting)",
                        retry_after=max(1, int(self.memory_wait_seconds // 10)),
                    ) from None
                raise
            finally:
                if ticket in self._line:
                    self._line.remove(ticket)
                self._cond.notify_all()
                self._update_gauges()

    def _refuse_if_never_fits(self, needed: int) -> None:
        pinned = sum(e.size_bytes for e in self._entries.values() if e.pinned)
        can_have = self.budget_bytes - pinned
        if needed > can_have:
            raise InsufficientMemoryError(
                f"the model needs {needed} bytes but at most {max(0, can_have)} of the {self.budget_bytes}-byte "
                f"budget can ever be free (pinned models hold {pinned})",
                bytes_needed=needed,
                bytes_available=max(0, can_have),
                budget_bytes=self.budget_bytes,
            )

    def _take(self, needed: int) -> bool:
        """Reserve ``needed`` bytes if free memory plus evictable models hold them now (begin
        evicting the least recently used of those that must go); False otherwise."""
        room = self.budget_bytes - self._held_bytes() - self._reserved
        victims = []
        for entry in sorted((e for e in self._entries.values() if not e.pinned), key=lambda e: e._lru):
            if room >= needed:
                break
            victims.append(entry)
            room += entry.size_bytes
        if room < needed:
            return False
        for victim in victims:
            self._begin_evict(victim, reason="lru")
        self._reserved += needed
        self._update_gauges()
        return True

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ eviction and leases

    async def evict(self, model_id: str) -> None:
        """Remove a model now; its memory is released once its leases are returned."""
        entry = self.get(model_id)
        async with self._cond:
            self._begin_evict(entry, reason="request")

    def _begin_evict(self, entry: ModelEntry, *, reason: str) -> None:
        if entry.evicting:
            return
        entry.evicting = True
        self._entries.pop(entry.id, None)
        self._evicting[entry.id] = entry
        if self._metrics is not None:
            self._metrics.evictions.labels(reason=reason).inc()
        logger.info("evicting model %s (%s, %d leases)", entry.id, reason, entry.leases)
        task = asyncio.create_task(self._finish_evict(entry), name=f"evict-{entry.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._update_gauges()

    async def _finish_evict(self, entry: ModelEntry) -> None:
        try:
            await entry._drained.wait()
            await self._loader.release(entry.id)
        except Exception:
            logger.exception("releasing model %s failed", entry.id)
        finally:
            entry.loaded = None
            async with self._cond:
                if self._evicting.get(entry.id) is entry:
                    del self._evicting[entry.id]
                entry._released.set()
                self._cond.notify_all()
            self._update_gauges()

    def acquire(self, model_id: str) -> Lease:
        """A read lease on a resident model (404 if absent or being evicted). Release it with
        :meth:`Lease.release` (e.g. in the ``finally`` of a streaming body)."""
        entry = self.get(model_id)
        entry.leases += 1
        entry._drained.clear()
        self._touch(entry)
        return Lease(self, entry)

    @asynccontextmanager
    async def lease(self, model_id: str) -> AsyncIterator[ModelEntry]:
        """``async with registry.lease(id) as entry:`` read ``entry.state_dict`` inside."""
        held = self.acquire(model_id)
        try:
            yield held.entry
        finally:
            held.release()

    async def close(self) -> None:
        """Forget every model (shutdown); the engine frees them when it tears down."""
        self._closed = True
        for infl in list(self._inflight.values()):
            if infl.task is not None:
                infl.task.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._entries.clear()
        self._evicting.clear()
        self._update_gauges()

    # ------------------------------------------------------------------ internals

    def _touch(self, entry: ModelEntry) -> None:
        entry._lru = next(self._tick)
        entry.last_used_at = now()

    def _held_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values()) + sum(e.size_bytes for e in self._evicting.values())

    def _update_gauges(self) -> None:
        m = self._metrics
        if m is None:
            return
        m.cache_bytes.set(self._held_bytes())
        m.cache_entries.set(len(self._entries))
        m.cache_budget_bytes.set(self.budget_bytes)
        m.cache_reserved_bytes.set(self._reserved)
