"""``megaload serve`` / ``python -m megaload serve`` as a real process: help, refused
settings, JSON logs with request ids, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serve_process import start_serve

FLAGS = ("--host", "--port", "--checkpoint-root", "--save-root", "--memory-budget", "--backend", "--device",
         "--token", "--token-file", "--read-token", "--read-token-file", "--insecure", "--log-format", "--log-level",
         "--shutdown-grace-seconds", "--stream-idle-timeout-seconds")


def _megaload(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megaload", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_documents_every_setting():
    r = _megaload("serve", "--help")
    assert r.returncode == 0
    for flag in FLAGS:
        assert flag in r.stdout, flag
    assert "MEGALOAD_" in r.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--host", "0.0.0.0"], ["token", "--insecure"]),
        (["--memory-budget", "120%"], ["memory_budget", "100"]),
        (["--memory-budget", "lots"], ["memory_budget"]),
        (["--checkpoint-root", "/definitely/not/here"], ["does not exist"]),
        (["--token", "short"], ["at least 16"]),
        (["--port", "70000"], ["port"]),
        (["--device", "cpu", "--backend", "nccl"], ["nccl", "gloo"]),
    ],
)
def test_unsafe_or_invalid_settings_refuse_to_start(args, words):
    r = _megaload("serve", *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


def test_token_never_echoed_in_errors():
    secret = "a-secret-token-that-must-not-leak"
    r = _megaload("serve", "--token", secret, "--token-file", "/nonexistent")
    assert r.returncode != 0 and secret not in r.stderr and secret not in r.stdout


def test_serve_json_logs_and_sigterm(ckpt_root):
    served = start_serve("--checkpoint-root", str(ckpt_root), "--log-format", "json", "--memory-budget", "1GiB")
    try:
        with served.client(timeout=60) as c:
            r = c.post("/v1/models", json={"checkpoint_path": "mlm_gpt"}, headers={"X-Request-ID": "cli-test-1"})
            assert r.status_code == 201, r.text
        # the declared fast HTTP parser and event loop are the ones serving (not h11/asyncio)
        maps = Path(f"/proc/{served.proc.pid}/maps").read_text()
        assert "/httptools/" in maps and "/uvloop/" in maps
        served.stop()
        # uvicorn re-raises the signal after its graceful shutdown (the conventional exit status)
        assert served.proc.returncode in (0, -signal.SIGTERM)
    finally:
        served.stop()
    lines = served.lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, "".join(lines)
    access = [r for r in records if r.get("request_id") == "cli-test-1"]
    assert any(r["logger"] == "megaload.access" and r.get("status") == 201 for r in access), access
    assert any("distributed context torn down" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_version():
    import megaload

    r = _megaload("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"megaload {megaload.__version__}"


def test_tensor_parallel_help_says_it_is_derived():
    r = _megaload("serve", "--help")
    help_text = " ".join(r.stdout.split())
    assert "--tensor-parallel T tensor-parallel size of loaded models (default: world size / P" in help_text


@pytest.mark.parametrize("budget", ["1GiB", "1.5 GiB", "2000MB", "1073741824"])
def test_memory_budget_takes_the_shared_size_syntax(budget, tmp_path):
    from megaload_client.sizes import parse_size

    r = _megaload("serve", "--memory-budget", budget, "--port", "70000")  # refused for the port, not the budget
    assert r.returncode != 0 and "port" in r.stderr and "memory_budget" not in r.stderr, r.stderr
    assert parse_size(budget) > 0


def test_export_hf_names_the_overwrite_flag(ckpt_root, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"")
    r = _megaload("export-hf", str(ckpt_root / "hf_qwen2"), str(out), "--max-shard-size", "1MiB")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--overwrite" in r.stderr and "overwrite=True" not in r.stderr, r.stderr
