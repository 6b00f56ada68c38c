"""The registry on its own: single flight, budget, LRU, pinning, leases, cancellation.

The loader here is a small in-test engine stand-in (the registry is what is under test): it
counts calls, can be held at a gate, and fails on request.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from megaload.checkpoint import CorruptCheckpointError
from megaload.errors import InsufficientMemoryError, ModelNotFoundError
from megaload.metrics import Metrics
from megaload.registry import LoadSpec, Registry


class Loader:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.estimates: Counter[str] = Counter()
        self.loads: Counter[str] = Counter()
        self.released: list[str] = []
        self.fail: set[str] = set()
        self.gate: asyncio.Event | None = None

    async def estimate_bytes(self, iteration_dir, dtype, on_start=None):
        if on_start is not None:
            on_start()
        self.estimates[iteration_dir] += 1
        await asyncio.sleep(0)
        return self.sizes[iteration_dir]

    async def load(self, model_id, spec, on_start=None, on_progress=None):
        if self.gate is not None:
            await self.gate.wait()
        if on_start is not None:
            on_start()
        self.loads[spec.iteration_dir] += 1
        if spec.iteration_dir in self.fail:
            raise CorruptCheckpointError(f"{spec.iteration_dir} is broken", path=spec.iteration_dir)
        return SimpleNamespace(size_bytes=self.sizes[spec.iteration_dir], state_dict={"w": model_id})

    async def release(self, model_id):
        self.released.append(model_id)


def spec(name: str, **kw) -> LoadSpec:
    kw.setdefault("checkpoint_path", name)
    return LoadSpec(iteration_dir=name, iteration=1, format="megatron_lm", fingerprint=(1,), **kw)


def run(coro):
    return asyncio.run(coro)


def test_model_id_is_stable_and_option_sensitive():
    assert spec("a").model_id == spec("a").model_id
    assert spec("a", checkpoint_path="other spelling").model_id == spec("a").model_id
    ids = {spec("a").model_id, spec("b").model_id, spec("a", dtype="bfloat16").model_id,
           spec("a", model_type="gpt").model_id, spec("a", mp_overrides=(("tensor_model_parallel_size", 1),)).model_id,
           LoadSpec("a", "a", 1, "megatron_lm", (2,)).model_id}
    assert len(ids) == 6


def test_concurrent_identical_loads_share_one_read():
    async def main():
        loader = Loader({"a": 100})
        loader.gate = asyncio.Event()
        reg = Registry(loader, 1000)
        tasks = [asyncio.create_task(reg.load(spec("a"))) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert reg.is_loading(spec("a").model_id)
        loader.gate.set()
        results = await asyncio.gather(*tasks)
        assert loader.loads["a"] == 1 and loader.estimates["a"] == 1
        assert [created for _, created in results].count(True) == 1
        assert len({entry.id for entry, _ in results}) == 1
        again, created = await reg.load(spec("a"))
        assert created is False and loader.loads["a"] == 1

    run(main())


def test_a_failed_load_reaches_every_waiter_and_leaves_nothing():
    async def main():
        loader = Loader({"a": 100, "b": 50})
        reg = Registry(loader, 1000)
        await reg.load(spec("b"))
        loader.fail.add("a")
        results = await asyncio.gather(*[reg.load(spec("a")) for _ in range(5)], return_exceptions=True)
        assert all(isinstance(r, CorruptCheckpointError) for r in results)
        assert loader.loads["a"] == 1
        assert reg.memory().reserved_bytes == 0 and reg.memory().used_bytes == 50
        assert [e.spec.iteration_dir for e in reg.list()] == ["b"]
        loader.fail.clear()
        entry, created = await reg.load(spec("a"))  # a retry reads again
        assert created and loader.loads["a"] == 2

    run(main())


def test_lru_eviction_and_pinning():
    async def main():
        metrics = Metrics()
        loader = Loader({"a": 400, "b": 400, "c": 400, "d": 900})
        reg = Registry(loader, 1000, metrics=metrics)
        a, _ = await reg.load(spec("a"), pin=True)
        b, _ = await reg.load(spec("b"))
        # c needs room: b (the only unpinned model) goes
        c, _ = await reg.load(spec("c"))
        await asyncio.sleep(0.01)
        assert b.id in loader.released and a.id not in loader.released
        assert {e.spec.iteration_dir for e in reg.list()} == {"a", "c"}
        # d cannot fit beside the pinned a: 507 without reading anything
        with pytest.raises(InsufficientMemoryError) as info:
            await reg.load(spec("d"))
        assert info.value.bytes_needed == 900 and info.value.bytes_available == 600
        assert loader.loads["d"] == 0 and c.id not in loader.released
        assert reg.memory().reserved_bytes == 0
        assert metrics.evictions.labels(reason="lru")._value.get() == 1
        assert metrics.cache_bytes._value.get() == 800

    run(main())


def test_recently_used_models_are_evicted_last():
    async def main():
        loader = Loader({"a": 300, "b": 300, "c": 300, "d": 300})
        reg = Registry(loader, 1000)
        a, _ = await reg.load(spec("a"))
        b, _ = await reg.load(spec("b"))
        c, _ = await reg.load(spec("c"))
        await reg.load(spec("a"))  # a is now the most recent
        await reg.load(spec("d"))
        await asyncio.sleep(0.01)
        assert loader.released == [b.id]

    run(main())


def test_eviction_waits_for_leases():
    async def main():
        loader = Loader({"a": 600, "b": 600})
        reg = Registry(loader, 1000)
        a, _ = await reg.load(spec("a"))
        lease = reg.acquire(a.id)
        assert a.leases == 1
        load_b = asyncio.create_task(reg.load(spec("b")))
        await asyncio.sleep(0.05)
        # a is no longer visible, but its memory is not released while the lease is held
        with pytest.raises(ModelNotFoundError):
            reg.get(a.id)
        with pytest.raises(ModelNotFoundError):
            reg.acquire(a.id)
        assert loader.released == [] and not load_b.done() and loader.loads["b"] == 0
        assert lease.entry.state_dict == {"w": a.id}  # the holder can still read
        lease.release()
        lease.release()  # idempotent
        b, created = await load_b
        assert created and loader.released == [a.id]
        assert reg.memory().used_bytes == 600

    run(main())


def test_delete_under_a_lease_and_reload_of_the_same_id():
    async def main():
        loader = Loader({"a": 100})
        reg = Registry(loader, 1000)
        a, _ = await reg.load(spec("a"))
        async with reg.lease(a.id) as entry:
            await reg.evict(a.id)
            assert entry.evicting and loader.released == []
            reload = asyncio.create_task(reg.load(spec("a")))
            await asyncio.sleep(0.02)
            assert not reload.done()  # the same id waits until the old one is released
        again, created = await reload
        assert created and loader.released == [a.id] and again.id == a.id and again is not a
        with pytest.raises(ModelNotFoundError):
            await reg.evict("nope")

    run(main())


def test_cancelling_the_only_waiter_before_the_engine_starts_cancels_the_load():
    async def main():
        loader = Loader({"a": 100})
        reg = Registry(loader, 1000)

        async def slow_estimate(iteration_dir, dtype, on_start=None):
            await asyncio.sleep(10)  # queued behind other engine work: not started

        loader.estimate_bytes = slow_estimate
        task = asyncio.create_task(reg.load(spec("a")))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.01)
        assert not reg.is_loading(spec("a").model_id)
        assert loader.loads["a"] == 0 and reg.memory().reserved_bytes == 0

    run(main())


def test_phases_reach_every_waiter():
    async def main():
        loader = Loader({"a": 100})
        loader.gate = asyncio.Event()
        reg = Registry(loader, 1000)
        seen: list[list[str]] = [[], []]
        started: list[int] = []
        first = asyncio.create_task(
            reg.load(spec("a"), on_start=lambda: started.append(1), on_phase=lambda f, p, read: seen[0].append(p))
        )
        await asyncio.sleep(0.01)
        second = asyncio.create_task(
            reg.load(spec("a"), on_start=lambda: started.append(2), on_phase=lambda f, p, read: seen[1].append(p))
        )
        await asyncio.sleep(0.01)
        loader.gate.set()
        await asyncio.gather(first, second)
        assert seen[0] == ["estimating", "waiting for memory", "loading"]
        assert seen[1] == ["waiting for memory", "loading"]  # joined late: told the current phase at once
        assert started == [1, 2]

    run(main())


def test_pin_on_repeat_and_budget_validation():
    async def main():
        loader = Loader({"a": 100})
        reg = Registry(loader, 1000)
        a, _ = await reg.load(spec("a"))
        assert not a.pinned
        await reg.load(spec("a"), pin=True)
        assert a.pinned
        assert reg.memory().evictable_bytes == 0

    run(main())
    with pytest.raises(ValueError):
        Registry(Loader({}), 0)


# ---------------------------------------------------------------------------------------------
# Loads in flight: a load that fits once they finish waits its turn; 507 only when it can never fit.


def test_concurrent_distinct_loads_wait_their_turn_instead_of_failing():
    async def main():
        names = [f"m{i}" for i in range(10)]
        loader = Loader({n: 400 for n in names})
        loader.gate = asyncio.Event()
        reg = Registry(loader, 1000)  # two fit at a time
        pinned = names[4]
        tasks = [asyncio.create_task(reg.load(spec(n), pin=(n == pinned))) for n in names]
        await asyncio.sleep(0.05)
        assert reg.memory().reserved_bytes == 800  # two reading, eight in line
        loader.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["tuple"] * 10, results
        assert all(created for _, created in results)
        assert sum(loader.loads.values()) == 10
        resident = {e.spec.iteration_dir: e for e in reg.list()}
        assert pinned in resident and resident[pinned].pinned  # the pinned one was never evicted
        assert reg.memory().used_bytes <= 1000 and reg.memory().reserved_bytes == 0

    run(main())


def test_loads_are_served_in_order():
    async def main():
        loader = Loader({"a": 600, "b": 600, "c": 300})
        loader.gate = asyncio.Event()
        reg = Registry(loader, 1000)
        order = []

        async def load(name):
            entry, _ = await reg.load(spec(name))
            order.append(name)
            return entry

        first = asyncio.create_task(load("a"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(load("b"))  # must wait for a, then evict it
        await asyncio.sleep(0.01)
        third = asyncio.create_task(load("c"))  # would fit beside a now, but b is first in line
        await asyncio.sleep(0.01)
        assert loader.loads == {} and reg.memory().reserved_bytes == 600
        loader.gate.set()
        await asyncio.gather(first, second, third)
        assert order == ["a", "b", "c"]
        await asyncio.sleep(0.01)
        assert {e.spec.iteration_dir for e in reg.list()} == {"b", "c"}

    run(main())


def test_never_fitting_is_507_at_once_even_behind_loads_in_flight():
    async def main():
        loader = Loader({"p": 500, "a": 400, "big": 600})
        reg = Registry(loader, 1000)
        await reg.load(spec("p"), pin=True)
        loader.gate = asyncio.Event()
        pending = asyncio.create_task(reg.load(spec("a")))
        await asyncio.sleep(0.01)
        with pytest.raises(InsufficientMemoryError) as info:
            await reg.load(spec("big"))
        assert info.value.bytes_available == 500 and loader.loads["big"] == 0
        loader.gate.set()
        await pending

    run(main())


def test_a_pinned_load_in_flight_decides_whether_a_waiting_load_can_ever_fit():
    async def main():
        loader = Loader({"p": 600, "q": 600})
        loader.gate = asyncio.Event()
        reg = Registry(loader, 1000)
        pinned = asyncio.create_task(reg.load(spec("p"), pin=True))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(reg.load(spec("q")))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # p might still fail
        loader.gate.set()
        await pinned
        with pytest.raises(InsufficientMemoryError):  # p is resident and pinned: q never fits
            await waiting
        # when the pinned load fails instead, the waiting one gets the room
        loader.gate.clear()
        loader.fail.add("r")
        loader.sizes.update(r=600, s=600)
        await reg.evict(spec("p").model_id)
        failing = asyncio.create_task(reg.load(spec("r"), pin=True))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(reg.load(spec("s")))
        await asyncio.sleep(0.01)
        loader.gate.set()
        with pytest.raises(CorruptCheckpointError):
            await failing
        entry, created = await second
        assert created and entry.spec.iteration_dir == "s"

    run(main())


def test_waiting_for_memory_has_a_time_limit():
    async def main():
        from megaload.errors import MemoryWaitTimeoutError, NotReadyError

        loader = Loader({"a": 600, "b": 600})
        reg = Registry(loader, 1000, memory_wait_seconds=0.2)
        a, _ = await reg.load(spec("a"))
        lease = reg.acquire(a.id)  # a reader that never finishes keeps a's memory
        with pytest.raises(MemoryWaitTimeoutError) as info:
            await reg.load(spec("b"))
        assert isinstance(info.value, NotReadyError) and info.value.retry_after >= 1
        assert "0.2 s" in str(info.value)
        assert reg.memory().reserved_bytes == 0 and loader.loads["b"] == 0
        lease.release()
        entry, created = await reg.load(spec("b"))
        assert created

    run(main())


def test_a_load_nobody_waits_for_leaves_the_line():
    async def main():
        loader = Loader({"a": 600, "b": 600, "c": 300})
        reg = Registry(loader, 1000)
        a, _ = await reg.load(spec("a"))
        lease = reg.acquire(a.id)
        b = asyncio.create_task(reg.load(spec("b")))  # a is evicted for it, but its memory stays leased
        await asyncio.sleep(0.02)
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        await asyncio.sleep(0.01)
        assert not reg.is_loading(spec("b").model_id) and loader.loads["b"] == 0
        entry, created = await reg.load(spec("c"))  # fits beside a's memory: not stuck behind b
        assert created
        lease.release()

    run(main())
