"""Service settings: one pydantic-settings object, read from ``MEGALOAD_*`` variables.

The command line (:mod:`megaload.__main__`) mirrors every field with a flag and passes what
was given as keyword arguments, which take precedence over the environment. Validators refuse
unsafe combinations (a non-loopback listen address without a token, a budget over 100%, a
root that does not exist) so that a misconfigured service never starts.

Torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` are read here too (they are how torchrun
talks to its workers); nothing else in the service reads the environment.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from megaload_client.sizes import parse_size

__all__ = ["Settings", "MemoryBudget", "parse_memory_budget", "is_loopback_host", "MIN_TOKEN_CHARS"]

MIN_TOKEN_CHARS = 16
MAX_READ_TOKENS = 64
_MAX_TOKEN_FILE_BYTES = 4096
_MAX_READ_TOKEN_FILE_BYTES = 64 * 1024
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what fits in an Authorization header
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class MemoryBudget:
    """A memory budget: an absolute byte count or a fraction of the device's memory."""

    __slots__ = ("bytes", "fraction")

    def __init__(self, *, bytes: int | None = None, fraction: float | None = None) -> None:
        if (bytes is None) == (fraction is None):
            raise ValueError("give exactly one of bytes or fraction")
        self.bytes = bytes
        self.fraction = fraction

    def resolve(self, total_bytes: int) -> int:
        """Bytes this budget grants on a device with ``total_bytes`` of memory."""
        if self.bytes is not None:
            return self.bytes
        return int(total_bytes * self.fraction)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryBudget) and (self.bytes, self.fraction) == (other.bytes, other.fraction)

    def __repr__(self) -> str:
        return f"MemoryBudget(bytes={self.bytes})" if self.bytes is not None else f"MemoryBudget({self.fraction:.0%})"


def parse_memory_budget(value: str | int | float | MemoryBudget) -> MemoryBudget:
    """``"64GiB"``, ``"500MB"``, ``"80%"`` or a byte count. Refuses zero, negatives and >100%."""
    if isinstance(value, MemoryBudget):
        return value
    if isinstance(value, bool):
        raise ValueError("memory budget must be a size such as '64GiB', '80%' or a byte count")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory budget must be positive, got {value}")
        return MemoryBudget(bytes=int(value))
    m = _PERCENT_RE.match(str(value))
    if m:
        number = float(m.group(1))
        if not 0 < number <= 100:
            raise ValueError(f"memory budget percentage must be in (0, 100], got {m.group(1)}%")
        return MemoryBudget(fraction=number / 100)
    try:
        return MemoryBudget(bytes=parse_size(str(value)))  # the one size syntax of every command line
    except ValueError as e:
        raise ValueError(f"memory budget: {e}, or a percentage such as '80%'") from None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_paths(value: object) -> object:
    if isinstance(value, str):
        return [p for p in value.split(os.pathsep) if p.strip()]
    if isinstance(value, (Path, os.PathLike)):
        return [value]
    return value


def _default_checkpoint_roots() -> list[Path]:
    demo = Path("data").absolute()
    return [demo] if demo.is_dir() else []


class Settings(BaseSettings):
    """Every setting of ``megaload serve``; see ``megaload serve --help``."""

    model_config = SettingsConfigDict(
        env_prefix="MEGALOAD_",
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
        arbitrary_types_allowed=True,
    )

    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port (0: any free port)")
    checkpoint_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=_default_checkpoint_roots,
        description="directories checkpoints may be read from (the demo ./data directory if it exists)",
    )
    save_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="directories checkpoints may be written to (none: saves refused)"
    )
    memory_budget: MemoryBudget | None = Field(
        None, description="bytes resident models may use: '64GiB', '80%', bytes (default: 50% of RAM, or of the container's memory limit, on CPU; 80% of GPU memory on CUDA)"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where models live")
    token: SecretStr | None = Field(
        None, description="the operator's bearer token: required on /v1 routes, allows every request"
    )
    token_file: Path | None = Field(None, description="file holding the operator's bearer token")
    read_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="read-only bearer tokens (comma-separated in the environment): GET and HEAD on /v1 "
        "routes and POST /v1/checkpoints/tokenize; need an operator token",
    )
    read_token_file: Path | None = Field(
        None, description="file holding read-only bearer tokens, one per line (added to read_tokens)"
    )
    insecure: bool = Field(False, description="allow a non-loopback listen address without a token")
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, le=3600, description="how long shutdown waits for a running save before abandoning it"
    )
    max_finished_jobs: int = Field(1000, ge=1, le=1_000_000, description="finished jobs kept for GET /v1/jobs")
    memory_wait_seconds: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="how long a load that fits once other loads finish (or models are evicted) waits for its "
        "memory before failing with 503",
    )
    huge_pages: Literal["auto", "on", "off"] = Field(
        "auto",
        description="transparent huge pages for the parameters a load fills (fewer page faults): auto is on unless "
        "THP is off or a VM balloon reports free pages to its host, where a fresh huge page costs more",
    )
    stream_idle_timeout_seconds: float = Field(
        30.0,
        ge=0.1,
        le=3600,
        description="a streamed response whose client takes no data for this long loses its lease and its "
        "connection",
    )
    tensor_parallel: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="tensor-parallel size of every loaded model (default: world size / pipeline_parallel; "
        "T*P must equal the world size)",
    )
    pipeline_parallel: int | None = Field(
        None, ge=1, le=1024, description="pipeline-parallel size of every loaded model (default 1)"
    )
    collective_timeout_seconds: float = Field(
        300.0,
        ge=5,
        le=86400,
        description="how long a collective may wait for the other ranks before the service fails and exits",
    )
    world_size: int = Field(
        1, ge=1, validation_alias=AliasChoices("world_size", "WORLD_SIZE"), description="set by torchrun"
    )
    rank: int = Field(0, ge=0, validation_alias=AliasChoices("rank", "RANK"), description="set by torchrun")
    local_rank: int = Field(
        0, ge=0, validation_alias=AliasChoices("local_rank", "LOCAL_RANK"), description="set by torchrun"
    )

    @field_validator("checkpoint_roots", "save_roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_paths(value)

    @field_validator("checkpoint_roots", "save_roots")
    @classmethod
    def _roots_exist(cls, roots: list[Path]) -> list[Path]:
        resolved: list[Path] = []
        for root in roots:
            if "\x00" in str(root):
                raise ValueError("a root contains a NUL byte")
            real = Path(os.path.realpath(root.expanduser()))
            if not real.is_dir():
                raise ValueError(f"root {root} does not exist or is not a directory")
            if real == Path(real.anchor):
                raise ValueError(f"root {root} is the file system root; name a narrower directory")
            if real not in resolved:
                resolved.append(real)
        return resolved

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_memory_budget(value)  # type: ignore[arg-type]

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token(cls, value: object) -> object:
        if isinstance(value, str) and value == "":
            return None
        return value

    @field_validator("read_tokens", mode="before")
    @classmethod
    def _split_read_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t for t in (part.strip() for part in value.split(",")) if t]
        return value

    @model_validator(mode="after")
    def _security(self) -> Settings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either a token or a token file, not both")
        if self.token_file is not None:
            self.token = SecretStr(_read_token_file(self.token_file))
            self.token_file = self.token_file.absolute()
        if self.token is not None:
            _check_token(self.token.get_secret_value())
        if self.read_token_file is not None:
            from_file = _read_read_token_file(self.read_token_file)
            self.read_tokens = [*self.read_tokens, *(SecretStr(t) for t in from_file)]
            self.read_token_file = self.read_token_file.absolute()
        self._check_read_tokens()
        if not is_loopback_host(self.host) and self.token is None and not self.insecure:
            raise ValueError(
                f"refusing to listen on non-loopback address {self.host!r} without an API token; "
                "set --token/--token-file (MEGALOAD_TOKEN/MEGALOAD_TOKEN_FILE) or pass --insecure"
            )
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.pipeline_parallel is None:
            self.pipeline_parallel = 1
        if self.tensor_parallel is None:
            self.tensor_parallel = max(1, self.world_size // self.pipeline_parallel)
        layout = self.tensor_parallel * self.pipeline_parallel
        if layout != self.world_size:
            raise ValueError(
                f"tensor_parallel ({self.tensor_parallel}) x pipeline_parallel ({self.pipeline_parallel}) = {layout} "
                f"must equal the world size ({self.world_size}): every rank holds one model-parallel part and "
                "data-parallel replicas are not supported; start torchrun with --nproc-per-node (x nodes) = T*P"
            )
        return self

    def _check_read_tokens(self) -> None:
        if not self.read_tokens:
            return
        if self.token is None:
            raise ValueError(
                "read tokens need an operator token: set --token/--token-file (MEGALOAD_TOKEN/MEGALOAD_TOKEN_FILE), "
                "or every write would be open"
            )
        if len(self.read_tokens) > MAX_READ_TOKENS:
            raise ValueError(f"at most {MAX_READ_TOKENS} read tokens, got {len(self.read_tokens)}")
        for i, secret in enumerate(self.read_tokens):
            value = secret.get_secret_value()
            try:
                _check_token(value)
            except ValueError as e:
                raise ValueError(f"read token {i + 1}: {e}") from None
            if "," in value:
                raise ValueError(f"read token {i + 1} contains ',', which separates read tokens")
            if hmac.compare_digest(value.encode(), self.token.get_secret_value().encode()):
                raise ValueError(f"read token {i + 1} equals the operator token")
        unique = dict.fromkeys(t.get_secret_value() for t in self.read_tokens)  # a token given twice counts once
        self.read_tokens = [SecretStr(v) for v in unique]

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None

    @property
    def read_token_values(self) -> tuple[str, ...]:
        return tuple(t.get_secret_value() for t in self.read_tokens)


def _check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"API token must be at least {MIN_TOKEN_CHARS} characters, got {len(token)}")
    if not _TOKEN_RE.match(token):
        raise ValueError("API token must be visible ASCII characters without spaces")


def _read_ascii_file(path: Path, kind: str, limit: int) -> str:
    """The text of the ``kind`` file at ``path`` (at most ``limit`` bytes of ASCII)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise ValueError(f"cannot read {kind} file {path}: {e.strerror}") from None
    if len(raw) > limit:
        raise ValueError(f"{kind} file {path} is larger than {limit} bytes")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{kind} file {path} is not ASCII text") from None


def _read_read_token_file(path: Path) -> list[str]:
    text = _read_ascii_file(path, "read-token", _MAX_READ_TOKEN_FILE_BYTES)
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise ValueError(f"read-token file {path} holds no token")
    return tokens


def _read_token_file(path: Path) -> str:
    token = _read_ascii_file(path, "token", _MAX_TOKEN_FILE_BYTES).strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
