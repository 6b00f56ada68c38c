"""What a request puts in the log cannot forge log lines: control characters are escaped.

``megaload serve`` runs as a real process (its own logging set up as in production) and is
sent paths whose percent-encoding decodes to a line feed, a carriage return, NEL (U+0085,
a line break to ``str.splitlines``), U+2028 and an ANSI escape. Before: the text log got the
forged line ``2026-01-01 00:00:00,000 INFO    megaload.access [-] forged ...`` as a line
of its own, and in the JSON log the raw U+0085 and U+2028 cut a record in two for any
reader that splits lines as Python does. After: every line the server writes is one record.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

from raw_http import connect, read_response

FORGED = "2026-01-01 00:00:00,000 INFO    megaload.access [-] forged"
PATHS = (
    "/nothing%0a2026-01-01%2000:00:00,000%20INFO%20%20%20%20megaload.access%20[-]%20forged%20line-feed",
    "/nothing%0d2026-01-01%2000:00:00,000%20INFO%20%20%20%20megaload.access%20[-]%20forged%20carriage-return",
    "/nothing%c2%852026-01-01%2000:00:00,000%20INFO%20%20%20%20megaload.access%20[-]%20forged%20nel",
    "/nothing%e2%80%a82026-01-01%2000:00:00,000%20INFO%20%20%20%20megaload.access%20[-]%20forged%20ls",
    "/nothing%1b[31mred%1b[0m",
)


def _serve(ckpt_root, log_format: str) -> tuple[list[str], str]:
    """Run the server, send the forging requests, stop it; its stderr, split as Python does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "megaload", "serve", "--port", "0", "--checkpoint-root", str(ckpt_root),
         "--log-format", log_format, "--memory-budget", "1GiB"],
        stderr=subprocess.PIPE,
    )
    head = b""
    try:
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            head += line
            m = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port, head.decode(errors="replace")
        for path in PATHS:
            with connect(f"http://127.0.0.1:{port}") as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
                assert read_response(sock).status == 404
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (head + rest).decode("utf-8")
    return text.splitlines(), text


def test_text_log_lines_cannot_be_forged(ckpt_root):
    lines, text = _serve(ckpt_root, "text")
    assert not [line for line in lines if line.startswith(FORGED)], "a request forged a log line"
    assert "\x1b" not in text
    access = [line for line in lines if "megaload.access" in line and "/nothing" in line]
    assert len(access) == len(PATHS), access
    assert any("\\n2026-01-01 00:00:00,000 INFO" in line for line in access)  # shown, escaped
    # every line the server wrote is a record of its own: a timestamp, then the level
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
    assert all(stamp.match(line) or line.startswith((" ", "\t")) for line in lines if line), lines


def test_json_log_records_stay_whole_lines(ckpt_root):
    lines, text = _serve(ckpt_root, "json")
    records = [json.loads(line) for line in lines if line.strip()]  # fails on a record cut in two
    paths = [r["message"].split(" ")[1] for r in records if r["logger"] == "megaload.access"]
    assert any("\n2026-01-01" in m for m in (r["message"] for r in records))  # the value itself is kept
    assert len([p for p in paths if p.startswith("/nothing")]) == len(PATHS)
    assert "\x1b" not in text and "\x85" not in text and "\u2028" not in text
