"""A real headless Chromium for the page tests, driven over the DevTools protocol on a pipe.

``require_chromium()`` returns the browser's path; without one the test skips with the reason,
except under ``CI=true``, where it fails (``make test`` installs Debian's ``chromium`` first,
see the Makefile's ``test-browser`` step). :class:`Browser` starts
``chromium --headless=new --remote-debugging-pipe`` (the protocol on file descriptors 3 and 4,
NUL-separated JSON: no websocket client needed) and opens :class:`Page` tabs, which record every
request the page makes and every uncaught script exception.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

__all__ = ["require_chromium", "Browser", "Page", "check_png"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def require_chromium() -> str:
    for name in _NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    reason = (
        "no Chromium on PATH (tried " + ", ".join(_NAMES) + "): `make test` installs Debian's chromium "
        "when run as root with apt-get; or apt-get install chromium"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the browser test must run)")
    pytest.skip(reason)


class Browser:
    """``with Browser(tmp_path) as browser: page = browser.page(); page.goto(url)``."""

    def __init__(self, workdir: Path, *, width: int = 1280, height: int = 900) -> None:
        self.binary = require_chromium()
        self.workdir = workdir
        self.size = (width, height)
        self._next_id = 0
        self._buffer = b""
        self._events: dict[str | None, list[dict]] = {}

    def __enter__(self) -> Browser:
        to_child_r, self._to_child = _pipe()
        self._from_child, from_child_w = _pipe()
        argv = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--mute-audio",
            "--hide-scrollbars", "--remote-debugging-pipe", f"--window-size={self.size[0]},{self.size[1]}",
            f"--user-data-dir={self.workdir / 'chromium-profile'}", "about:blank",
        ]
        self.log_path = self.workdir / "chromium.log"
        with open(self.log_path, "wb") as log:
            # the protocol's descriptors must be 3 and 4 in the browser: the shell moves them there
            self._proc = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{to_child_r} 4>&{from_child_w}', "chromium", *argv],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        os.close(to_child_r)
        os.close(from_child_w)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(20)
        finally:
            os.close(self._to_child)
            os.close(self._from_child)

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, f"{method} (reply)")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.setdefault(reply.get("sessionId"), []).append(reply)

    def events(self, session: str | None, method: str) -> list[dict]:
        """The params of the events ``method`` received so far for ``session``."""
        self.drain()
        return [e["params"] for e in self._events.get(session, []) if e.get("method") == method]

    def drain(self) -> None:
        while True:
            ready, _, _ = select.select([self._from_child], [], [], 0)
            if not ready and b"\0" not in self._buffer:
                return
            message = self._read(time.monotonic() + 5, "events")
            self._events.setdefault(message.get("sessionId"), []).append(message)

    def _read(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"chromium did not answer {what}; its log: {self.log_path}")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the protocol pipe; its log: {self.log_path}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable", session=session)
        width, height = self.size
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        return Page(self, session)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None, **kw: Any) -> dict:
        return self.browser.send(method, params, session=self.session, **kw)

    def goto(self, url: str) -> None:
        """Navigate to ``url`` and wait until its document has loaded."""
        frame = self.send("Page.navigate", {"url": url})
        if frame.get("errorText"):
            raise RuntimeError(f"{url}: {frame['errorText']}")
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def reload(self) -> None:
        url = self.evaluate("location.href")
        self.evaluate("window.__reloading = true")
        self.send("Page.reload")
        self.wait_for(f"!window.__reloading && location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                html = self.evaluate("document.documentElement.outerHTML")
                raise AssertionError(f"timed out waiting for {expression!r}; the page:\n{html}")
            time.sleep(0.1)

    def html(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(data)
        return data

    @property
    def requests(self) -> list[str]:
        """Every URL the page asked for (documents, scripts, styles, fetches, images)."""
        return [e["request"]["url"] for e in self.browser.events(self.session, "Network.requestWillBeSent")]

    @property
    def exceptions(self) -> list[str]:
        return [
            e["exceptionDetails"].get("exception", {}).get("description") or e["exceptionDetails"]["text"]
            for e in self.browser.events(self.session, "Runtime.exceptionThrown")
        ]

    def pixel_stats(self, png: bytes) -> dict:
        """The browser's decode of ``png``: width, height, distinct colours, and the share of
        pixels that differ from the most common colour (0 for a blank image)."""
        script = """
        (async () => {
          const img = new Image();
          img.src = "data:image/png;base64,%s";
          await img.decode();
          const c = document.createElement("canvas");
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          const d = ctx.getImageData(0, 0, c.width, c.height).data;
          const counts = new Map();
          for (let i = 0; i < d.length; i += 4) {
            const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
            counts.set(k, (counts.get(k) || 0) + 1);
          }
          const top = Math.max(...counts.values());
          return {width: c.width, height: c.height, colours: counts.size, other: 1 - top / (d.length / 4)};
        })()
        """ % base64.b64encode(png).decode("ascii")
        return self.evaluate(script)


def check_png(data: bytes) -> tuple[int, int]:
    """Check ``data`` is a whole PNG file (signature, every chunk's CRC, IHDR first, IEND last,
    the image data inflating to exactly the scanlines IHDR declares); its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    assert interlace == 0, "interlaced"
    row = 1 + (width * channels * depth + 7) // 8
    assert len(zlib.decompress(idat)) == height * row, "image data does not match IHDR"
    return width, height


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are numbered 10 and up (never 3 or 4, which the shell is to fill)."""
    r, w = os.pipe()
    hi_r, hi_w = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(r)
    os.close(w)
    return hi_r, hi_w
