"""What the registry hands out: load specs, resident entries, read leases, memory usage.

The registry (:mod:`megaload.registry`) makes and tracks these; routes and the runtime read
them. A :class:`Lease` keeps its entry's memory from being released until it is returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["LoadSpec", "ModelEntry", "Lease", "ModelLoader", "MemoryUsage", "now"]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LoadSpec:
    """What to load. Everything but ``checkpoint_path`` (as the caller spelled it) and
    ``fingerprint``'s role as a cache-buster goes into the model id."""

    checkpoint_path: str
    iteration_dir: str  # resolved, symlinks followed
    iteration: int | None
    format: str
    fingerprint: tuple[int, ...]  # identity of the files on disk (inode, size, mtime of .metadata)
    model_type: str | None = None
    dtype: str | None = None  # canonical torch name ("bfloat16") or None: as stored
    mp_overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def model_id(self) -> str:
        """Stable for the same resolved checkpoint (same files) and load options."""
        key = json.dumps(
            [self.iteration_dir, list(self.fingerprint), self.model_type, self.dtype, list(self.mp_overrides)],
            sort_keys=True,
        )
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


class ModelLoader(Protocol):
    """What the registry needs from the engine."""

    async def estimate_bytes(self, iteration_dir: str, dtype: str | None, on_start: Callable[[], None] | None) -> int: ...

    async def load(
        self,
        model_id: str,
        spec: LoadSpec,
        on_start: Callable[[], None] | None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Any: ...

    async def release(self, model_id: str) -> None: ...


@dataclass
class ModelEntry:
    """A resident model. ``loaded`` is the loader's handle (``state_dict``, sizes, dtype)."""

    id: str
    spec: LoadSpec
    loaded: Any
    size_bytes: int
    pinned: bool = False
    loaded_at: datetime = field(default_factory=now)
    last_used_at: datetime = field(default_factory=now)
    leases: int = 0
    evicting: bool = False
    _lru: int = 0
    _drained: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._drained.set()

    @property
    def state_dict(self) -> dict[str, Any]:
        """Flat ``{key: tensor}`` of the model's own tensors (zero-copy). Hold a lease while reading."""
        return self.loaded.state_dict


@dataclass(frozen=True)
class MemoryUsage:
    budget_bytes: int
    used_bytes: int
    reserved_bytes: int
    evictable_bytes: int

    @property
    def available_bytes(self) -> int:
        return max(0, self.budget_bytes - self.used_bytes - self.reserved_bytes)


class Lease:
    """A read lease on a resident model: eviction waits until it is released."""

    def __init__(self, registry: Registry, entry: ModelEntry) -> None:
        self._registry = registry
        self.entry = entry
        self._released = False

    def release(self) -> None:
        """Idempotent; call from the event loop thread."""
        if self._released:
            return
        self._released = True
        self.entry.leases -= 1
        if self.entry.leases == 0:
            self.entry._drained.set()

    async def __aenter__(self) -> ModelEntry:
        return self.entry

    async def __aexit__(self, *exc: object) -> None:
        self.release()
