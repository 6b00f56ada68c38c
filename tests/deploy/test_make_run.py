"""`make run`: it installs what serving needs (not the test extras), the launcher it calls starts
a real service on the demo, the log ends in one "ready" line with the URL and carries no
megatron-core accelerator warnings (Apex, Transformer Engine), and the three next steps it prints
work when pasted (run here as printed, in a subprocess, against that service)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEGALOAD_")}
    env.update(extra)
    return env


def _argv(line: str, replacements: dict[str, str]) -> list[str]:
    for old, new in replacements.items():
        line = line.replace(old, new)
    argv = shlex.split(line)
    if argv[0].startswith(".venv/bin/"):  # the banner names the project's venv, as make run makes it
        argv[0] = str(BIN / Path(argv[0]).name)
    return argv


def test_make_run_calls_the_launcher_with_the_data_dir(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    stamp = tmp_path / "stamp"
    stamp.touch()  # an up-to-date install stamp: only the run recipe is printed
    out = subprocess.run(
        [make, "--no-print-directory", "-n", "run", f"RUN_STAMP={stamp}", "ARGS=--log-format json"],
        cwd=REPO, env=_env(MEGALOAD_DATA_DIR=str(tmp_path / "d")), capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    assert len(out) == 1, out
    argv = shlex.split(out[0])
    assert argv[1:3] == ["-m", "megaload.demo"]
    assert argv[argv.index("--data-dir") + 1] == str(tmp_path / "d")
    assert argv[-3:] == ["--serve", "--log-format", "json"]


def _dry_run(make: str, target: str, venv: Path) -> list[str]:
    """The commands ``make target`` would run from nothing (a venv that does not exist yet)."""
    out = subprocess.run(
        [make, "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, check=True,
    ).stdout
    return [shlex.split(line) for line in out.splitlines() if "pip" in line and " install " in line]


def test_make_run_installs_what_serving_needs_and_make_test_the_test_extras(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    run = _dry_run(make, "run", venv)
    installed = [arg for argv in run for arg in argv[argv.index("install") + 1 :]]
    assert "." in installed and "./client" in installed, run  # the service and the client, editable
    assert not [a for a in installed if "[" in a], f"make run installs extras: {run}"
    test = _dry_run(make, "test", venv)
    assert test[: len(run)] == run  # the same runtime install first
    assert [argv[-1] for argv in test[len(run) :]] == [".[test]"], test


def test_launcher_refuses_bad_settings_in_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "megaload.demo", "--data-dir", str(tmp_path), "--serve"],
        cwd=REPO, env=_env(MEGALOAD_PORT="eighty"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "invalid settings" in proc.stderr and "port" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "demo-gpt").exists()


@pytest.mark.slow
def test_launcher_serves_the_demo_and_its_next_steps_work(tmp_path):
    port = _free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "megaload.demo", "--data-dir", str(data), "--serve"],
        cwd=REPO, env=_env(MEGALOAD_PORT=str(port), MEGALOAD_MEMORY_BUDGET="1GiB"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []  # everything the launcher and the service print, as it comes

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        ready = f"megaload ready on {url} "
        while not any(ready in line for line in lines):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("no ready line; the output:\n" + "\n".join(lines))
            time.sleep(0.1)
        ready_line = next(line for line in lines if ready in line)
        text = "\n".join(lines)
        banner = lines[: lines.index(next(line for line in lines if line.startswith("  3."))) + 2]
        assert f"megaload is starting on {url}" in text, text
        assert "0 models resident" in ready_line and "memory budget 1.0 GiB" in ready_line, ready_line
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/readyz").status_code == 200  # the line comes once the service is ready
            info = http.get("/v1/info").json()
        assert info["checkpoint_roots"] == [str(data.resolve())]
        assert info["save_roots"] == [str((data / "saves").resolve())]

        steps = [line.strip() for line in banner if line.startswith("     ")]
        assert len(steps) == 5, text
        replacements = {'"$(mktemp -d)"': str(tmp_path / "out")}  # nothing is written where the banner runs
        outputs = []
        for line in steps:
            if "MODEL_ID" in line:
                replacements["MODEL_ID"] = re.search(r"^id\s+(\S+)", outputs[1], re.M).group(1)
            argv = _argv(line, replacements)
            if argv[0] == "curl" and shutil.which("curl") is None:
                outputs.append("")
                continue
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
        if outputs[0]:
            assert '"checkpoint_path":"demo-gpt"' in outputs[0].replace(" ", "")
        assert "float32" in outputs[2]  # ls lists the loaded demo
        assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
        count, _, values, _ = outputs[4].split()
        assert int(count) > 0 and int(values) > 1_000_000
        # megatron-core's accelerator fallbacks (at import and at the first load) and torch's
        # deprecation notices stay out of the default log; no other warning shows either
        noise = [line for line in lines if re.search(r"Transformer Engine|Apex|\w+Warning: ", line)]
        assert not noise, "\n".join(noise)
        (tmp_path / "make-run.log").write_text("\n".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(10)
            proc.stdout.close()
