"""Parallel shard workers: results in order, and the first failure stops the rest."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import megaload_client as mc


def test_sync_map_keeps_order_and_surfaces_the_real_failure_early():
    started = threading.Event()
    stopped = []

    def work(item, abort: threading.Event):
        if item == "slow":
            started.set()
            deadline = time.monotonic() + 10
            while not abort.is_set():  # a shard worker checks abort between chunks
                assert time.monotonic() < deadline, "abort was never signalled"
                time.sleep(0.01)
            stopped.append(item)
            raise RuntimeError("stopped")
        if item == "bad":
            started.wait(5)
            raise ValueError("shard 1 is corrupt")
        return item * 2

    with mc.Client("http://127.0.0.1:1") as client:
        assert client._map(work, [1, 2, 3], max_workers=2) == [2, 4, 6]
        with pytest.raises(ValueError, match="corrupt"):
            client._map(work, ["slow", "bad"], max_workers=2)
    assert stopped == ["slow"]


def test_async_map_keeps_order_and_cancels_the_rest_on_failure():
    cancelled = []

    async def work(item):
        if item == "slow":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(item)
                raise
        if item == "bad":
            await asyncio.sleep(0.01)
            raise ValueError("shard 1 is corrupt")
        return item * 2

    async def scenario():
        async with mc.AsyncClient("http://127.0.0.1:1") as client:
            assert await client._map(work, [1, 2, 3], max_workers=2) == [2, 4, 6]
            with pytest.raises(ValueError, match="corrupt"):
                await client._map(work, ["slow", "bad"], max_workers=2)

    asyncio.run(scenario())
    assert cancelled == ["slow"]
