"""`make run`: the launcher it calls starts a real service on the demo, and the three next steps
it prints work when pasted (run here as printed, in a subprocess, against that service)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
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
        [make, "--no-print-directory", "-n", "run", f"STAMP={stamp}", "ARGS=--log-format json"],
        cwd=REPO, env=_env(MEGALOAD_DATA_DIR=str(tmp_path / "d")), capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    assert len(out) == 1, out
    argv = shlex.split(out[0])
    assert argv[1:3] == ["-m", "megaload.demo"]
    assert argv[argv.index("--data-dir") + 1] == str(tmp_path / "d")
    assert argv[-3:] == ["--serve", "--log-format", "json"]


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
    try:
        banner: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line.rstrip("\n"))
            if line.startswith("  3."):
                banner.append(proc.stdout.readline().rstrip("\n"))
                break
        text = "\n".join(banner)
        assert f"megaload is starting on {url}" in text, text
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"service did not become ready; banner:\n{text}")
                time.sleep(0.2)
            info = http.get("/v1/info").json()
        assert info["checkpoint_roots"] == [str(data.resolve())]
        assert info["save_roots"] == [str((data / "saves").resolve())]

        steps = [line.strip() for line in banner if line.startswith("     ")]
        assert len(steps) == 5, text
        replacements = {"out/": str(tmp_path / "out") + "/"}
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
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
