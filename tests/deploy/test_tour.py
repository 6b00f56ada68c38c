"""The five-minute tour in README.md runs as written against `make run`'s service.

Every ```bash block after the tour's heading is run, in order, as one bash script (so the
variables it sets carry over), from a fresh directory whose .venv is this interpreter's; the
only change is the service's URL (a free port instead of 8000). The directory is a git
repository with the project's .gitignore, as a fresh clone is; the tour runs twice in a row
(a newcomer runs it again) and must leave the directory as it found it.
"""

from __future__ import annotations

import os
import re
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
TOUR = REPO / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"


def tour_script(url: str) -> str:
    text = TOUR.read_text()
    _, tour = text.split("## Five-minute tour", 1)
    tour = tour.split("\n## ", 1)[0]  # up to the next section
    blocks = re.findall(r"```bash\n(.*?)```", tour, re.S)
    assert len(blocks) >= 5
    return "set -euo pipefail\n" + "\n".join(blocks).replace(DEFAULT_URL, url)


def test_two_commands_open_the_section():
    text = TOUR.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    assert text.index("make run") < text.index("## Five-minute tour")


def _snapshot(directory: Path) -> tuple[str, list[str]]:
    """``git status`` of ``directory`` and every path under it (outside .git)."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored"], cwd=directory,
                            capture_output=True, text=True, check=True).stdout
    paths = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if ".git" not in p.parts)
    return status, paths


@pytest.mark.slow
def test_the_tour_runs_as_written_twice(tmp_path):
    if shutil.which("bash") is None or shutil.which("curl") is None or shutil.which("git") is None:
        pytest.skip("the tour needs bash and curl (and this test git)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEGALOAD_")}
    data = tmp_path / "data"
    server = subprocess.Popen(
        [sys.executable, "-m", "megaload.demo", "--data-dir", str(data), "--serve"],
        cwd=REPO, env={**env, "MEGALOAD_PORT": str(port), "MEGALOAD_MEMORY_BUDGET": "1GiB"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.25)
        work = tmp_path / "work"  # the repository root of a fresh clone, as far as the tour can tell
        work.mkdir()
        shutil.copy(REPO / ".gitignore", work / ".gitignore")
        git = ["git", "-c", "user.name=tour", "-c", "user.email=tour@example.invalid"]
        subprocess.run([*git, "init", "-q"], cwd=work, check=True)
        subprocess.run([*git, "add", ".gitignore"], cwd=work, check=True)
        subprocess.run([*git, "commit", "-qm", "clone"], cwd=work, check=True)
        (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
        before = _snapshot(work)
        temp = tmp_path / "tmp"  # the tour's mktemp -d lands here
        temp.mkdir()
        for run in (1, 2):
            done = subprocess.run(
                ["bash", "-c", tour_script(url)], cwd=work, env={**env, "MEGALOAD_URL": url, "TMPDIR": str(temp)},
                capture_output=True, text=True, timeout=600,
            )
            assert done.returncode == 0, f"run {run}:\n" + done.stdout[-3000:] + done.stderr[-3000:]
            out = done.stdout
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            assert '"status":"ready"' in out and "detokenized: 'Hello, megaload'" in out
            assert re.search(r"^  num_layers = 4$", out, re.M)
            assert re.search(r"^decoder\.final_layernorm\.weight  float32  \(128,\)  512 B$", out, re.M)
            assert "type            HuggingFaceTokenizer" in out
            assert re.search(r"^\d+ tensors, \d+ values$", out, re.M)
            assert "model.decoder.layers.0.self_attention.linear_qkv.weight (384, 128) torch.bfloat16" in out
            assert re.search(r"left out \(not tensors\): 17 entries \(\*\._extra_state\): .* and 14 more", out)
            assert re.search(r"save\s+succeeded", out) and '"state":"succeeded"' in out
            assert "checkpoint      saves/demo-gpt-copy" in out
            assert (data / "saves" / "demo-gpt-copy" / "latest_checkpointed_iteration.txt").is_file()
            assert _snapshot(work) == before, f"run {run} wrote into the repository"
        outs = sorted(temp.glob("megaload-tour.*"))
        assert len(outs) == 2, outs  # one per run, named by the tour
        for out_dir in outs:
            assert (out_dir / "demo-safetensors" / "model.safetensors.index.json").is_file()
            assert (out_dir / "demo-hf" / "config.json").is_file()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        finally:
            if server.poll() is None:
                server.kill()
