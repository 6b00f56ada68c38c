"""``megaload serve`` as a real subprocess, for tests that measure the process (its memory)
or kill it (``kill -9``): started on port 0, its port read from uvicorn's log line, its
stderr collected by a thread so the pipe never fills."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    base_url: str
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None  # collects stderr into lines until the process ends

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 120), **kw)

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory so far (VmHWM)."""
        return _status_kib(self.proc.pid, "VmHWM") * 1024

    def rss_bytes(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS") * 1024

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s; once it returns, ``lines`` holds all the process wrote."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(60)
        if self.pump is not None:
            self.pump.join(30)

    def log(self) -> str:
        return "".join(self.lines)


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def start_serve(*flags: str, timeout: float = 180.0) -> ServeProcess:
    """``python -m megaload serve --port 0 --device cpu --backend gloo FLAGS...``, ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "megaload", "serve", "--port", "0", "--device", "cpu", "--backend", "gloo", *flags],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = _RUNNING.search(line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    pumping = threading.Thread(target=pump, name="serve-stderr", daemon=True)
    pumping.start()
    deadline = time.monotonic() + timeout
    if not found.wait(timeout) or not port:
        proc.kill()
        raise RuntimeError("megaload serve did not start:\n" + "".join(lines))
    served = ServeProcess(proc, f"http://127.0.0.1:{port[0]}", lines, pumping)
    with served.client(timeout=10) as c:
        while c.get("/readyz").status_code != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("megaload serve did not become ready:\n" + served.log())
            time.sleep(0.05)
    return served
