"""Settings: environment variables, flags, and the validators that refuse unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from megaload.__main__ import build_parser, settings_from_args
from megaload.settings import MemoryBudget, Settings, is_loopback_host, parse_memory_budget

TOKEN = "0123456789abcdef-token"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("MEGALOAD_") or key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(key)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert (s.host, s.port, s.backend, s.device, s.log_format) == ("127.0.0.1", 8000, "auto", "auto", "text")
    assert s.checkpoint_roots == [] and s.save_roots == []  # no ./data here
    (tmp_path / "data").mkdir()
    assert Settings().checkpoint_roots == [(tmp_path / "data").resolve()]
    assert s.memory_budget is None and s.token is None and s.world_size == 1


def test_environment(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("MEGALOAD_HOST", "::1")
    monkeypatch.setenv("MEGALOAD_PORT", "9001")
    monkeypatch.setenv("MEGALOAD_CHECKPOINT_ROOTS", f"{a}:{b}")
    monkeypatch.setenv("MEGALOAD_SAVE_ROOTS", str(b))
    monkeypatch.setenv("MEGALOAD_MEMORY_BUDGET", "64GiB")
    monkeypatch.setenv("MEGALOAD_BACKEND", "gloo")
    monkeypatch.setenv("MEGALOAD_DEVICE", "cpu")
    monkeypatch.setenv("MEGALOAD_TOKEN", TOKEN)
    monkeypatch.setenv("MEGALOAD_LOG_FORMAT", "json")
    s = Settings()
    assert s.host == "::1" and s.port == 9001
    assert s.checkpoint_roots == [a.resolve(), b.resolve()] and s.save_roots == [b.resolve()]
    assert s.memory_budget == MemoryBudget(bytes=64 * 1024**3)
    assert (s.backend, s.device, s.log_format) == ("gloo", "cpu", "json")
    assert s.token_value == TOKEN
    assert TOKEN not in repr(s)


def test_flags_override_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEGALOAD_PORT", "9001")
    monkeypatch.setenv("MEGALOAD_LOG_FORMAT", "json")
    args = build_parser().parse_args(
        ["serve", "--port", "9002", "--checkpoint-root", str(tmp_path), "--checkpoint-root", str(tmp_path),
         "--memory-budget", "80%"]
    )
    s = settings_from_args(args)
    assert s.port == 9002 and s.log_format == "json"
    assert s.checkpoint_roots == [tmp_path.resolve()]  # duplicates collapse
    assert s.memory_budget == MemoryBudget(fraction=0.8)


def test_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    s = Settings()
    assert (s.world_size, s.rank, s.local_rank) == (4, 2, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValidationError, match="outside world size"):
        Settings()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_non_loopback_needs_a_token_or_insecure(host):
    with pytest.raises(ValidationError, match="--insecure"):
        Settings(host=host)
    assert Settings(host=host, token=TOKEN).host == host
    assert Settings(host=host, insecure=True).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


def test_token_rules(tmp_path):
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(token="short")
    with pytest.raises(ValidationError, match="visible ASCII"):
        Settings(token="has spaces in the token!")
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert Settings(token_file=f).token_value == TOKEN
    with pytest.raises(ValidationError, match="not both"):
        Settings(token=TOKEN, token_file=f)
    with pytest.raises(ValidationError, match="cannot read token file"):
        Settings(token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="empty"):
        Settings(token_file=tmp_path / "empty")
    (tmp_path / "big").write_text("x" * 5000)
    with pytest.raises(ValidationError, match="larger than"):
        Settings(token_file=tmp_path / "big")
    assert Settings(token="").token is None


READER = "reader-token-0123456789"


def test_read_tokens_from_flags_environment_and_file(monkeypatch, tmp_path):
    f = tmp_path / "readers"
    f.write_text(f"{READER}-file\n\n  {READER}-two  \n")
    monkeypatch.setenv("MEGALOAD_READ_TOKENS", f"{READER}-env, {READER}-env2,")
    s = Settings(token=TOKEN, read_token_file=f)
    assert s.read_token_values == (f"{READER}-env", f"{READER}-env2", f"{READER}-file", f"{READER}-two")
    assert s.read_token_file == f.absolute()
    monkeypatch.delenv("MEGALOAD_READ_TOKENS")
    args = build_parser().parse_args(["serve", "--token", TOKEN, "--read-token", READER, "--read-token", READER + "2"])
    assert settings_from_args(args).read_token_values == (READER, READER + "2")
    assert Settings(token=TOKEN, read_tokens=[READER, READER]).read_token_values == (READER,)
    assert Settings(token=TOKEN, stream_idle_timeout_seconds=5).stream_idle_timeout_seconds == 5
    assert Settings().stream_idle_timeout_seconds == 30


def test_read_token_rules(tmp_path):
    with pytest.raises(ValidationError, match="need an operator token"):
        Settings(read_tokens=[READER])
    with pytest.raises(ValidationError, match="read token 2: API token must be at least 16"):
        Settings(token=TOKEN, read_tokens=[READER, "short"])
    with pytest.raises(ValidationError, match="equals the operator token"):
        Settings(token=TOKEN, read_tokens=[TOKEN])
    with pytest.raises(ValidationError, match="separates read tokens"):
        Settings(token=TOKEN, read_tokens=[READER + ",x"])
    (tmp_path / "blank").write_text("\n \n")
    with pytest.raises(ValidationError, match="holds no token"):
        Settings(token=TOKEN, read_token_file=tmp_path / "blank")
    with pytest.raises(ValidationError, match="cannot read read-token file"):
        Settings(token=TOKEN, read_token_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="stream_idle_timeout_seconds"):
        Settings(stream_idle_timeout_seconds=0)
    r = settings_error_text(["serve", "--read-token", READER])
    assert READER not in r and "operator token" in r


def settings_error_text(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        settings_from_args(build_parser().parse_args(argv))
    return str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("64GiB", MemoryBudget(bytes=64 * 1024**3)),
        ("500MB", MemoryBudget(bytes=500 * 1000**2)),
        ("1.5 GiB", MemoryBudget(bytes=int(1.5 * 1024**3))),
        ("80%", MemoryBudget(fraction=0.8)),
        ("100%", MemoryBudget(fraction=1.0)),
        ("123456", MemoryBudget(bytes=123456)),
        (4096, MemoryBudget(bytes=4096)),
    ],
)
def test_memory_budget_spellings(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("text", ["0", "0%", "120%", "-5", "lots", "5 parsecs", "", "1e9"])
def test_memory_budget_refusals(text):
    if text == "":
        assert Settings(memory_budget=text).memory_budget is None
        return
    with pytest.raises(ValidationError, match="memory budget"):
        Settings(memory_budget=text)


def test_memory_budget_resolution():
    assert MemoryBudget(fraction=0.5).resolve(1000) == 500
    assert MemoryBudget(bytes=7).resolve(1000) == 7


def test_roots_must_exist_and_not_be_the_file_system_root(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(checkpoint_roots=[tmp_path / "missing"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValidationError, match="not a directory"):
        Settings(save_roots=[tmp_path / "file"])
    with pytest.raises(ValidationError, match="file system root"):
        Settings(checkpoint_roots=["/"])
    link = tmp_path / "link"
    link.symlink_to(tmp_path / ".")
    assert Settings(checkpoint_roots=[link]).checkpoint_roots == [tmp_path.resolve()]


def test_other_limits():
    for bad in ({"port": 70000}, {"port": -1}, {"backend": "mpi"}, {"device": "tpu"}, {"log_format": "xml"},
                {"shutdown_grace_seconds": -1}, {"max_finished_jobs": 0}, {"unknown_setting": 1}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def _help_defaults() -> dict[str, str]:
    """Each ``megaload serve`` flag whose help names a literal default, ``(default X;`` or
    ``(default X)``: its setting's name and X."""
    import re

    serve = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    found = {}
    for action in serve._actions:
        m = re.search(r"\(default ([^\s:;,)]+)[;)]", action.help or "")
        if m:
            found[action.dest] = m.group(1)
    return found


@pytest.mark.parametrize("world_size", [1, 4])
def test_every_default_a_flag_names_is_the_settings_default(world_size, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", str(world_size))  # as torchrun sets it
    claimed = _help_defaults()
    assert {"port", "log_level", "pipeline_parallel", "collective_timeout_seconds"} <= set(claimed), claimed
    s = Settings()
    for field, text in claimed.items():
        value = getattr(s, field)
        if isinstance(value, (int, float)):
            assert value == float(text), f"--{field.replace('_', '-')} says default {text}, the setting is {value}"
        else:
            assert str(value) == text, f"--{field.replace('_', '-')} says default {text}, the setting is {value}"


def test_tensor_parallel_default_follows_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert Settings().tensor_parallel == 4
    assert Settings(pipeline_parallel=2).tensor_parallel == 2
    serve = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    (tp,) = [a for a in serve._actions if a.dest == "tensor_parallel"]
    assert "world size / P" in tp.help
