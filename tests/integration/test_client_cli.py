"""``megaload-client`` as a new user meets it: real CLI subprocesses against the real service.

The module-scoped ``service`` fixture (conftest.py) runs the real app on a real uvicorn server;
every command here is ``python -m megaload_client`` in a process of its own, on pipes, on a
pseudo-terminal (progress bars) and into a real pipe closed early (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.server
import json
import os
import pty
import re
import shlex
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import megaload_client as mc
from megaload_client._cli import build_parser
from megaload_client.types import MAX_PATH_CHARS

CLI = [sys.executable, "-m", "megaload_client"]
# What a validation library or an unhandled exception says: never shown to a user.
INTERNALS = ("Traceback", "pydantic", "Invalid JSON", "errors.pydantic.dev", "validation error for", "EOF while parsing")


def _cli(service, *args: str, stdin: str | None = None, url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--url", url or service.base_url, *args], capture_output=True, text=True,
                          timeout=300, input=stdin, env={**os.environ, "MEGALOAD_TOKEN": ""})


def _on_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal (120 columns); its status and output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def model_id(service) -> str:
    with mc.Client(service.base_url) as client:
        return client.load("mlm_gpt").id


@contextlib.contextmanager
def _not_megaload() -> Iterator[str]:
    """An HTTP server that answers every GET with 200 and a body that is no megaload answer."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---------------------------------------------------------------------- help and version


def test_version_of_both_clis():
    client = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert client.returncode == 0 and client.stdout.strip() == f"megaload-client {mc.__version__}"
    service = subprocess.run([sys.executable, "-m", "megaload", "--version"], capture_output=True, text=True,
                             timeout=60)
    import megaload

    assert service.returncode == 0 and service.stdout.strip() == f"megaload {megaload.__version__}"


def _every_action(parser: argparse.ArgumentParser, where: str = "") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_action(sub, f"{where} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield where, action


def test_every_argument_of_both_clis_has_help():
    from megaload.__main__ import build_parser as service_parser

    for parser in (build_parser(), service_parser()):
        for where, action in _every_action(parser):
            assert action.help and action.help.strip(), f"{parser.prog}{where} {action.dest}: no help"


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, status, words",
    [
        (["jobs", ""], 2, ["JOB_ID", "empty"]),
        (["jobs", "", "--wait"], 2, ["JOB_ID", "empty"]),
        (["jobs", "--cancel"], 2, ["--cancel needs a JOB_ID"]),
        (["show", ""], 2, ["MODEL_ID", "empty"]),
        (["show", "0" * 24], 1, ["404 Model not found"]),
        (["download", "x", "d", "--max-shard-bytes", "lots"], 2, ["--max-shard-bytes", "not a size"]),
        (["download", "x", "d", "--max-shard-bytes", "0"], 2, ["--max-shard-bytes", "positive"]),
        (["index", "x", "--tp-rank", "1"], 2, ["--tp-rank and --tp-size go together"]),
        (["index", "x", "--tp-rank", "2", "--tp-size", "2"], 2, ["must be below --tp-size 2"]),
        (["index", "x", "--names", "nope"], 2, ["--names", "invalid choice"]),
        (["load", "mlm_gpt", "--mp", "no_such_setting=1"], 2, ["no_such_setting", "unknown setting"]),
        (["load", "/"], 1, ["403"]),
        (["load", "x" * (MAX_PATH_CHARS + 1)], 2, ["checkpoint_path", "at most"]),
        (["config", "no/such/checkpoint"], 1, ["404"]),
        (["tokenize", "", "text"], 2, ["PATH", "empty"]),
        (["--timeout", "soon", "ls"], 2, ["--timeout", "invalid float value"]),
        (["no-such-command"], 2, ["invalid choice"]),
        ([], 2, ["required"]),
    ],
)
def test_bad_input_is_one_clear_line_or_one_json_document(service, args, status, words):
    text = _cli(service, *args)
    assert text.returncode == status, text.stderr
    assert text.stdout == ""
    for word in words:
        assert word in text.stderr, (word, text.stderr)
    for internal in INTERNALS:
        assert internal not in text.stderr, text.stderr
    assert text.stderr.splitlines()[-1].startswith("megaload-client"), text.stderr

    for argv in (["--json", *args], [*args, "--json"]) if args and args[0] != "--timeout" else (["--json", *args],):
        as_json = _cli(service, *argv)
        assert as_json.returncode == status, as_json.stderr
        error = json.loads(as_json.stderr)["error"]  # the whole of stderr: one document
        assert set(error) >= {"type", "status", "title", "detail"}, error
        assert all(internal not in as_json.stderr for internal in INTERNALS), as_json.stderr
        if status == 2:
            assert error["type"] in ("usage", "invalid-argument") and error["status"] is None
        else:
            assert error["type"].startswith("urn:megaload:problem:") and error["status"] >= 400


def test_no_service_and_not_a_megaload_service(service):
    down = _cli(service, "ls", url=_closed_port_url())
    assert down.returncode == 1 and "could not talk to the service" in down.stderr
    assert json.loads(_cli(service, "--json", "ls", url=_closed_port_url()).stderr)["error"]["type"] == "connection"
    with _not_megaload() as url:
        odd = _cli(service, "ls", url=url)
        assert odd.returncode == 1 and "could not be read" in odd.stderr, odd.stderr
        assert all(internal not in odd.stderr for internal in INTERNALS), odd.stderr
        error = json.loads(_cli(service, "info", "--json", url=url).stderr)["error"]
        assert error["type"] == "bad-response" and "Info" in error["detail"]


def test_a_save_onto_a_checkpoint_names_the_cli_flag_and_the_flag_works(service, model_id):
    first = _cli(service, "save", model_id, "cli-hint-copy", "--no-progress")
    assert first.returncode == 0, first.stderr
    again = _cli(service, "save", model_id, "cli-hint-copy")
    assert again.returncode == 1
    assert "409 Checkpoint already exists" in again.stderr and "pass --overwrite" in again.stderr
    assert "overwrite=true" not in again.stderr.lower()
    error = json.loads(_cli(service, "save", model_id, "cli-hint-copy", "--json").stderr)["error"]
    assert error["type"] == "urn:megaload:problem:checkpoint-exists" and error["status"] == 409
    assert "pass --overwrite" in error["detail"]
    replaced = _cli(service, "save", model_id, "cli-hint-copy", "--overwrite")
    assert replaced.returncode == 0 and re.search(r"save\s+succeeded", replaced.stdout), replaced.stderr


# ---------------------------------------------------------------------- --json, -q, sizes, jobs


def test_json_before_or_after_the_command(service, model_id):
    before = _cli(service, "--json", "show", model_id)
    after = _cli(service, "show", model_id, "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout)["id"] == json.loads(after.stdout)["id"] == model_id
    assert _cli(service, "load", "-q", "mlm_gpt").stdout == f"{model_id}\n"
    assert model_id in _cli(service, "ls", "-q").stdout.split()


def test_sizes_take_units_and_print_in_binary(service, model_id, tmp_path):
    with mc.Client(service.base_url) as client:
        want = client.state_dict_index(model_id, max_shard_bytes=2**20)  # the service's smallest shard
    for spelling in ("1MiB", "1048576", "1 mib", "1.0MiB", "0.5 MiB"):
        listed = _cli(service, "--json", "index", model_id, "--max-shard-bytes", spelling)
        if spelling == "0.5 MiB":  # a size the service refuses, refused as the service says
            assert listed.returncode == 1 and "1048576" in json.loads(listed.stderr)["error"]["errors"][0]["msg"]
            continue
        assert listed.returncode == 0, (spelling, listed.stderr)
        shards = json.loads(listed.stdout)["shards"]
        assert [s["filename"] for s in shards] == [s.filename for s in want.shards], spelling
    done = _cli(service, "download", model_id, str(tmp_path / "d"), "--max-shard-bytes", "1MiB")
    assert done.returncode == 0, done.stderr
    assert f"{len(want.shards)} shard(s)" in done.stdout
    assert len(list((tmp_path / "d").glob("*.safetensors"))) == len(want.shards)
    # one convention for sizes: binary units, never a decimal "MB" or a bare "4.26M"
    listing = _cli(service, "ls").stdout + _cli(service, "info").stdout + done.stdout
    assert re.search(r"\d+\.\d (KiB|MiB|GiB)", listing), listing
    assert not re.search(r"\d(k|K|M|G)B?\b(?!i)", listing.replace("MiB", "").replace("KiB", "").replace("GiB", ""))


def test_skipped_entries_are_summarized(service, model_id, tmp_path):
    with mc.Client(service.base_url) as client:
        skipped = client.state_dict_index(model_id).skipped
    done = _cli(service, "download", model_id, str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("left out")]
    if not skipped:
        assert not lines
        return
    assert len(lines) == 1 and f"{len(skipped)} entr" in lines[0]
    if len(skipped) > 3:
        assert f"and {len(skipped) - 3} more" in lines[0] and skipped[-1] not in lines[0]
    assert json.loads(_cli(service, "--json", "download", model_id, str(tmp_path / "d")).stdout)["skipped"] == skipped


def test_summary_of_many_keys():
    from megaload_client._cli._output import summarize_keys

    keys = [f"model.decoder.layers.{i}.mlp.linear_fc1._extra_state" for i in range(300)]
    line = summarize_keys(keys)
    assert line.startswith("300 entries (*._extra_state): model.decoder.layers.0.") and "and 297 more" in line
    assert len(line) < 300
    assert summarize_keys(["a.b"]) == "1 entry: a.b"


def test_jobs_wait_without_an_id_waits_for_the_active_ones(service, model_id):
    idle = _cli(service, "jobs", "--wait")
    assert idle.returncode == 0 and idle.stdout.strip() in ("no job queued or running",) or "save" in idle.stdout
    job_id = _cli(service, "save", "-q", "--no-wait", "--overwrite", model_id, "cli-wait-copy").stdout.strip()
    assert job_id
    waited = _cli(service, "jobs", "--wait")
    assert waited.returncode == 0, waited.stderr
    assert job_id in waited.stdout or waited.stdout.strip() == "no job queued or running"
    shown = json.loads(_cli(service, "--json", "jobs", job_id).stdout)
    assert shown["state"] == "succeeded"


# ---------------------------------------------------------------------- inspection and tensor flags


def test_config_tensors_and_tokenizer_commands_match_the_sdk(service):
    with mc.Client(service.base_url) as client:
        config = client.checkpoint_config("mlm_gpt")
        tensors = client.checkpoint_tensors("mlm_gpt")
        tokenizer = client.checkpoint_tokenizer("mlm_gpt")
    for command, want in (("config", config), ("tensors", tensors), ("tokenizer", tokenizer)):
        got = _cli(service, command, "mlm_gpt", "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == json.loads(want.model_dump_json()), command
    text = _cli(service, "tensors", "mlm_gpt").stdout
    first = tensors.tensors[0]
    assert f"{first.name}  {first.dtype}  ({', '.join(map(str, first.shape))}" in text
    assert f"{tensors.tensor_count} tensors" in text
    assert f"num_layers = {config.config['num_layers']}" in _cli(service, "config", "mlm_gpt").stdout
    assert tokenizer.tokenizer_type in _cli(service, "tokenizer", "mlm_gpt").stdout


def test_index_and_download_with_hf_names(service, tmp_path):
    with mc.Client(service.base_url) as client:
        hf_id = client.load("hf_qwen2").id
        want = client.state_dict_index(hf_id, names="hf")
    listed = _cli(service, "index", hf_id, "--names", "hf")
    assert listed.returncode == 0, listed.stderr
    assert "model.layers.0.self_attn.q_proj.weight" in listed.stdout
    assert f"{len(want.weight_map)} tensors" in listed.stdout
    done = _cli(service, "download", hf_id, str(tmp_path / "hf"), "--names", "hf")
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want.weight_map)


def test_tensor_parallel_slices(service, model_id, tmp_path):
    """Needs the SDK's tp_rank=/tp_size= keywords (index, download)."""
    full = json.loads(_cli(service, "--json", "index", model_id).stdout)
    halves = []
    for rank in (0, 1):
        got = _cli(service, "--json", "index", model_id, "--tp-rank", str(rank), "--tp-size", "2")
        assert got.returncode == 0, got.stderr
        halves.append(json.loads(got.stdout))
    assert set(halves[0]["weight_map"]) == set(full["weight_map"])
    assert halves[0]["total_size"] < full["total_size"]
    done = _cli(service, "download", model_id, str(tmp_path / "tp1"), "--tp-rank", "1", "--tp-size", "2")
    assert done.returncode == 0, done.stderr
    index = json.loads((tmp_path / "tp1" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == halves[1]["total_size"]


# ---------------------------------------------------------------------- pipes and terminals


def test_a_pipe_closed_early_ends_quietly(service, tmp_path):
    text = tmp_path / "numbers.txt"
    text.write_text(" ".join(["12", "34", "56"] * 100_000))  # ~900 KB of ids out: far more than a pipe holds
    command = " ".join(shlex.quote(a) for a in [*CLI, "--url", service.base_url, "tokenize", "mlm_gpt", "-"])
    script = f"{command} < {shlex.quote(str(text))} 2> {shlex.quote(str(tmp_path / 'err'))} | head -c 20; " \
        'echo " status=${PIPESTATUS[0]}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("300000 tokens"), (done.stdout, (tmp_path / "err").read_text())
    assert "status=141" in done.stdout, done.stdout
    assert (tmp_path / "err").read_text() == ""


def test_progress_is_on_on_a_terminal_and_off_on_pipes(service, model_id, tmp_path):
    base = [*CLI, "--url", service.base_url]
    status, shown = _on_terminal([*base, "download", model_id, str(tmp_path / "a"), "--max-shard-bytes", "1MiB"])
    assert status == 0, shown
    assert re.search(r"download \w+: 100%\|.*\| \d+\.\d (KiB|MiB)/\d+\.\d (KiB|MiB) \[.*(KiB|MiB)/s\]", shown), shown
    assert not re.search(r"\d(k|M)B/s|\d\.\d\dM/", shown), shown
    status, saved = _on_terminal([*base, "save", model_id, "cli-bar-copy", "--overwrite"])
    assert status == 0 and re.search(r"save \w+: 100%\|.*\| \[\d\d:\d\d, done\]", saved), saved
    assert "%/s" not in saved
    with mc.Client(service.base_url) as client:
        client.unload(model_id)
    status, loaded = _on_terminal([*base, "load", "mlm_gpt"])
    assert status == 0 and re.search(r"load \w+: 100%\|.*\| \[\d\d:\d\d, done\]", loaded), loaded
    status, quiet = _on_terminal([*base, "download", model_id, str(tmp_path / "b"), "--no-progress"])
    assert status == 0 and "%|" not in quiet, quiet

    piped = _cli(service, "download", model_id, str(tmp_path / "c"))
    assert piped.returncode == 0 and "%|" not in piped.stderr, piped.stderr
    forced = _cli(service, "download", model_id, str(tmp_path / "d"), "--progress")
    assert forced.returncode == 0 and "100%|" in forced.stderr, forced.stderr


def test_help_and_the_client_readme_document_the_error_shape_and_types():
    from megaload_client._cli import ERROR_TYPES

    text = " ".join(build_parser().format_help().split())
    assert '{"error": {"type", "status", "title", "detail"}}' in text and "141" in text
    readme = " ".join((Path(__file__).resolve().parents[2] / "client" / "README.md").read_text().split())
    assert '{"error": {"type": ..., "status": ..., "title": ..., "detail": ...}}' in readme
    for kind in ERROR_TYPES:
        assert f"`{kind}`" in readme, kind
