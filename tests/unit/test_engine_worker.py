"""The engine's worker thread and life cycle, with commands of the test's own.

The worker is real (its thread, queue and futures); the commands are plain values and the
``run`` function records what it was handed. The engine tests use a real (single-process,
gloo) torch.distributed group to make the start-up fail and the injected fatal policy to see
a failed collective handled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass

import pytest
import torch.distributed as dist

from megaload.checkpoint import DistributedContextError, initialize_distributed, shutdown_distributed
from megaload.engine import Engine, EngineState
from megaload.engine._worker import Worker
from megaload.errors import EngineStoppedError, NotReadyError


@dataclass(frozen=True)
class Note:
    text: str


@dataclass(frozen=True)
class Fail:
    error: BaseException


@dataclass(frozen=True)
class Block:
    release: threading.Event
    started: threading.Event


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.threads: set[str] = set()

    def __call__(self, command: object) -> object:
        self.threads.add(threading.current_thread().name)
        if isinstance(command, Fail):
            raise command.error
        if isinstance(command, Block):
            command.started.set()
            assert command.release.wait(10)
            self.seen.append("block")
            return "unblocked"
        assert isinstance(command, Note)
        self.seen.append(command.text)
        return command.text.upper()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def worker(recorder):
    w = Worker(recorder, name="test-worker")
    yield w
    w.close(Note("last"), 5)


def test_commands_run_in_submission_order_on_the_worker_thread(worker, recorder):
    first = worker.start(Note("first"))
    futures = [worker.submit(Note(str(i))) for i in range(20)]
    assert first.result(5) == "FIRST"
    assert [f.result(5) for f in futures] == [str(i) for i in range(20)]
    assert recorder.seen == ["first", *[str(i) for i in range(20)]]
    assert recorder.threads == {"test-worker"}


def test_an_exception_reaches_the_callers_future_and_the_worker_goes_on(worker):
    worker.start(Note("up")).result(5)
    failing = worker.submit(Fail(ValueError("no such tensor")))
    after = worker.submit(Note("after"))
    with pytest.raises(ValueError, match="no such tensor"):
        failing.result(5)
    assert after.result(5) == "AFTER"


def test_a_base_exception_is_wrapped_so_the_worker_survives(worker):
    class CheckpointException(BaseException):  # torch DCP's derives from BaseException
        pass

    worker.start(Note("up")).result(5)
    fut = worker.submit(Fail(CheckpointException("rank 0 failed")))
    with pytest.raises(RuntimeError, match="CheckpointException: rank 0 failed") as info:
        fut.result(5)
    assert isinstance(info.value.__cause__, CheckpointException)
    assert worker.submit(Note("still here")).result(5) == "STILL HERE"


def test_on_start_runs_when_the_command_is_picked_up(worker):
    order: list[str] = []
    release, started = threading.Event(), threading.Event()
    worker.start(Block(release, started))
    assert started.wait(5)
    fut = worker.submit(Note("x"), on_start=lambda: order.append("started"))
    time.sleep(0.05)
    assert order == []  # still queued behind the blocked command
    release.set()
    fut.result(5)
    assert order == ["started"]


def test_close_cancels_queued_commands_waits_for_the_running_one_then_runs_the_last(recorder):
    worker = Worker(recorder)
    release, started = threading.Event(), threading.Event()
    running = worker.start(Block(release, started))
    assert started.wait(5)
    queued = [worker.submit(Note(f"q{i}")) for i in range(3)]
    assert worker.queue_depth == 3
    closer = concurrent.futures.ThreadPoolExecutor(1).submit(worker.close, Note("last"), 10)
    time.sleep(0.1)
    assert all(f.cancelled() for f in queued)
    assert not closer.done()  # waiting for the running command
    release.set()
    assert closer.result(10) is True
    assert running.result() == "unblocked"
    assert recorder.seen == ["block", "last"]
    with pytest.raises(EngineStoppedError):
        worker.submit(Note("late"))
    assert worker.close(Note("again"), 1) is True  # idempotent


def test_close_gives_up_on_a_command_that_outlives_the_grace_period(recorder):
    worker = Worker(recorder)
    release, started = threading.Event(), threading.Event()
    worker.start(Block(release, started))
    assert started.wait(5)
    try:
        assert worker.close(Note("last"), 0.1) is False
        assert worker.running == Block(release, started)
    finally:
        release.set()


def test_idle_runs_when_nothing_is_queued(recorder):
    pings = threading.Event()
    worker = Worker(recorder, idle=pings.set, idle_seconds=lambda: 0.01)
    worker.start(Note("up")).result(5)
    assert pings.wait(5)
    assert worker.close(Note("last"), 5) is True


def test_a_worker_starts_once(worker):
    worker.start(Note("up"))
    with pytest.raises(RuntimeError, match="already started"):
        worker.start(Note("again"))


# ---------------------------------------------------------------------------- the engine


def test_a_failed_start_up_fails_the_engine_and_refuses_commands():
    initialize_distributed("gloo")  # the engine cannot build a second default group
    try:
        engine = Engine(device="cpu", backend="gloo")
        startup = engine.start()
        with pytest.raises(DistributedContextError):
            startup.result(30)
        assert engine.state is EngineState.FAILED
        assert isinstance(engine.error, DistributedContextError)
        with pytest.raises(NotReadyError, match="failed to start"):
            asyncio.run(engine.wait_ready())
        assert engine.shutdown(5) is True
        assert engine.state is EngineState.STOPPED
        with pytest.raises(EngineStoppedError):
            engine.check_ready()
    finally:
        shutdown_distributed()
    assert not dist.is_initialized()


def test_a_failed_collective_fails_the_engine_once_and_calls_the_fatal_policy():
    calls: list[None] = []
    engine = Engine(device="cpu", backend="gloo", world_size=2, on_fatal=lambda: calls.append(None))
    engine.state = EngineState.READY

    def broken_collective() -> None:
        raise RuntimeError("connection reset by rank 1")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="connection reset"):
            engine.ranks.collective(broken_collective)
    assert engine.state is EngineState.FAILED
    assert str(engine.error) == "connection reset by rank 1"
    assert len(calls) == 1
    with pytest.raises(NotReadyError, match="failed"):
        engine.check_ready()


def test_shutdown_of_an_engine_never_started():
    engine = Engine(device="cpu", backend="gloo")
    assert engine.shutdown(1) is True
    assert engine.state is EngineState.STOPPED
