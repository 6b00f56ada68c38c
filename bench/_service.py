"""Processes the benchmarks measure: the real service, and memory readings of a process.

:class:`Service` starts ``python -m megaload serve`` as a child on 127.0.0.1 (a free port,
CPU device, the given checkpoint root and memory budget), waits for ``/readyz`` and stops
it with SIGTERM. :class:`PeakRss` measures a process's peak resident memory over a block of
code two ways: Linux's own high-water mark (``VmHWM``, reset to the current RSS by writing
``5`` to ``/proc/<pid>/clear_refs`` before the block, read after it; free, exact, needs a
kernel >= 4.0 and permission to write the file) and, when asked, a psutil sample every
``interval`` seconds from a thread (a cross-check that costs the measured run some CPU).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

__all__ = ["free_port", "Service", "PeakRss", "proc_status_kib", "wait_http", "cpu_model", "machine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout} s")
        time.sleep(0.1)


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class Service:
    """The real megaload service as a child process (a context manager); ``startup_s`` is the
    time from spawning it to its first 200 on ``/readyz``."""

    def __init__(self, checkpoint_root: Path, log_path: Path, *, memory_budget: str = "8GiB") -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "megaload", "serve",
            "--checkpoint-root", str(checkpoint_root),
            "--port", str(self.port),
            "--memory-budget", memory_budget,
            "--device", "cpu",
            "--log-level", "warning",
        ]  # fmt: skip
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Service:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in __exit__
        began = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.base_url + "/readyz", timeout=120, process=self.process)
        except BaseException:
            self.__exit__()
            raise
        self.startup_s = time.perf_counter() - began
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class PeakRss:
    """Peak RSS growth of ``pid`` over a ``with`` block, in bytes, over the RSS at entry.

    ``hwm_growth``: ``VmHWM`` after the block minus ``VmRSS`` at entry (``None`` when the
    high-water mark could not be reset). ``sampled_growth``: the largest psutil RSS seen by
    the sampling thread minus the RSS at entry (``None`` unless ``interval`` was given).
    """

    def __init__(self, pid: int, *, interval: float | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = 0
        self.hwm_growth: int | None = None
        self.sampled_growth: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
        self.baseline = proc_status_kib(self.pid, "VmRSS") * 1024
        if self.interval is not None:
            self._peak = self.baseline
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            self._peak = max(self._peak, process.memory_info().rss)
            self.samples += 1
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sampled_growth = self._peak - self.baseline
        if self._hwm:
            self.hwm_growth = proc_status_kib(self.pid, "VmHWM") * 1024 - self.baseline


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import platform

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "transparent_hugepage": _sysfs("/sys/kernel/mm/transparent_hugepage/enabled"),
    }


def _sysfs(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def report_goals(results: dict, goals: list[tuple[str, float, str, bool]], width: int = 58) -> None:
    """Record ``(what, value, goal, met)`` rows in ``results["goals"]`` and print them, one a line."""
    results["goals"] = [{"what": w, "value": v, "goal": g, "met": m} for w, v, g, m in goals]
    print()
    for what, value, goal, met in goals:
        print(f"{what:<{width}}{value:>9.2f}  goal {goal:<7}{'met' if met else 'MISSED'}")
