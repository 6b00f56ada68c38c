"""The v1 routes as :class:`Call` values: what to send and how to read the answer.

A ``Call`` is plain data plus a parse function; it does no I/O. :class:`~._client.Client`
and :class:`~._async_client.AsyncClient` send the same calls, so both clients build and
parse requests identically and differ only in how they wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from ._retry import is_idempotent
from .types import (
    CheckpointConfig,
    CheckpointTensors,
    Health,
    Info,
    Job,
    JobList,
    LoadModelRequest,
    ModelInfo,
    ModelList,
    ModelParallelOverrides,
    ProblemDetail,
    Readiness,
    SaveModelRequest,
    StateDictIndex,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)

__all__ = [
    "Call", "StateDictQuery", "state_dict_query", "state_dict_params", "shard", "shard_path", "load_request",
    "save_request", "NAMES", "HUB_NAMESPACE",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API and the function that turns its successful answer into ``T``.

    ``ok`` lists the statuses handed to ``parse``; any other status >= 400 becomes a typed
    error. ``idempotent`` overrides the method's default (a POST that may safely repeat).
    ``timeout`` overrides the client's (``...`` means the client's own).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    idempotent: bool | None = None
    ok: frozenset[int] = frozenset()
    timeout: Any = ...

    @property
    def retryable(self) -> bool:
        return is_idempotent(self.method) if self.idempotent is None else self.idempotent


def _as(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return model.model_validate_json(response.content)

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _seg(value: str) -> str:
    """A path segment, percent-encoded so an id can never change the route."""
    return quote(str(value), safe="")


def _body(request: BaseModel) -> dict[str, Any]:
    return request.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------ service


def health() -> Call[Health]:
    return Call("GET", "/healthz", _as(Health))


def _readiness(response: httpx.Response) -> Readiness:
    try:
        return Readiness.model_validate_json(response.content)
    except ValueError:
        if response.status_code == 200:
            raise
    detail: str | None
    try:  # 503 with a problem document saying why
        problem = ProblemDetail.model_validate_json(response.content)
        detail = problem.detail or problem.title
    except ValueError:
        detail = response.text[:500] or None
    return Readiness(status="starting", detail=detail)


def ready() -> Call[Readiness]:
    # 503 is an answer here ("not yet"), not an error, and is not retried.
    return Call("GET", "/readyz", _readiness, ok=frozenset({503}))


def info() -> Call[Info]:
    return Call("GET", "/v1/info", _as(Info))


# ------------------------------------------------------------------ checkpoints


def checkpoint_config(path: str) -> Call[CheckpointConfig]:
    return Call("GET", "/v1/checkpoints/config", _as(CheckpointConfig), params=(("path", path),))


def checkpoint_tensors(path: str) -> Call[CheckpointTensors]:
    return Call("GET", "/v1/checkpoints/tensors", _as(CheckpointTensors), params=(("path", path),))


def checkpoint_tokenizer(path: str) -> Call[TokenizerInfo]:
    return Call("GET", "/v1/checkpoints/tokenizer", _as(TokenizerInfo), params=(("path", path),))


def tokenize(request: TokenizeRequest) -> Call[TokenizeResponse]:
    # Pure function of its input: safe to repeat.
    return Call("POST", "/v1/checkpoints/tokenize", _as(TokenizeResponse), json=_body(request), idempotent=True)


# ------------------------------------------------------------------ models


def _model_or_job(response: httpx.Response) -> ModelInfo | Job:
    if response.status_code == 202:
        return Job.model_validate_json(response.content)
    return ModelInfo.model_validate_json(response.content)


def load_request(
    checkpoint_path: str,
    model_type: str | None,
    dtype: str | None,
    mp_overrides: Mapping[str, Any] | ModelParallelOverrides | None,
    pin: bool,
    *,
    wait: bool,
) -> LoadModelRequest:
    """Validated here first, so a bad argument fails before anything is sent."""
    overrides = mp_overrides
    if overrides is not None and not isinstance(overrides, ModelParallelOverrides):
        overrides = ModelParallelOverrides.model_validate(dict(overrides))
    return LoadModelRequest.model_validate(
        {"checkpoint_path": checkpoint_path, "model_type": model_type, "dtype": dtype, "mp_overrides": overrides,
         "pin": pin, "wait": wait}
    )


def save_request(path: str, ckpt_format: str, hf_tokenizer_path: str | None, overwrite: bool) -> SaveModelRequest:
    return SaveModelRequest.model_validate(
        {"path": path, "ckpt_format": ckpt_format, "hf_tokenizer_path": hf_tokenizer_path, "overwrite": overwrite}
    )


def load_model(request: LoadModelRequest, *, timeout: Any = ...) -> Call[ModelInfo | Job]:
    # A model id is stable for the same checkpoint and options: repeating a load is safe.
    return Call("POST", "/v1/models", _model_or_job, json=_body(request), idempotent=True, timeout=timeout)


def get_model(model_id: str) -> Call[ModelInfo]:
    return Call("GET", f"/v1/models/{_seg(model_id)}", _as(ModelInfo))


def list_models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _as(ModelList))


def unload_model(model_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/models/{_seg(model_id)}", _nothing)


def save_model(model_id: str, request: SaveModelRequest) -> Call[Job]:
    # Not idempotent: each POST starts a job.
    return Call("POST", f"/v1/models/{_seg(model_id)}/save", _as(Job), json=_body(request))


# ------------------------------------------------------------------ state dict


NAMES = ("megatron", "hf")
"""What ``names=`` may say: the model's own tensors, or the Hugging Face model it corresponds to."""


@dataclass(frozen=True)
class StateDictQuery:
    """Which model and which view of its state dict: the index and every shard of one call
    are asked with the same ``params`` (the service requires them equal)."""

    model_id: str
    params: tuple[tuple[str, str], ...] = ()


def state_dict_query(model_id: str, *options: Any) -> StateDictQuery:
    """The query of a state-dict call; ``options`` are :func:`state_dict_params`'s."""
    return StateDictQuery(model_id, state_dict_params(*options))


def state_dict_params(
    dtype: str | None = None,
    keys: str | Iterable[str] | None = None,
    max_shard_bytes: int | None = None,
    names: str = "megatron",
    tp_rank: int | None = None,
    tp_size: int | None = None,
) -> tuple[tuple[str, str], ...]:
    """The query shared by the index and every shard (the service requires them equal).
    ``names="hf"`` asks for the Hugging Face view (``ValueError`` for anything but
    :data:`NAMES`); the default sends nothing, so older services understand the query.
    ``tp_rank``/``tp_size`` (both or neither, ``0 <= tp_rank < tp_size``) ask for what one
    tensor-parallel rank of that size holds. Bad values are a ``ValueError`` before anything
    is sent."""
    if names not in NAMES:
        raise ValueError(f"names must be one of {', '.join(NAMES)}, got {names!r}")
    params: list[tuple[str, str]] = []
    if names != "megatron":
        params.append(("names", names))
    if max_shard_bytes is not None:
        params.append(("max_shard_bytes", str(int(max_shard_bytes))))
    if dtype is not None:
        params.append(("dtype", str(dtype)))
    if keys is not None:
        for key in [keys] if isinstance(keys, str) else keys:
            params.append(("keys", key))
    params.extend(_tp_params(tp_rank, tp_size))
    return tuple(params)


def _tp_params(tp_rank: int | None, tp_size: int | None) -> list[tuple[str, str]]:
    if tp_rank is None and tp_size is None:
        return []
    if tp_rank is None or tp_size is None:
        raise ValueError(f"tp_rank and tp_size go together, got tp_rank={tp_rank!r} and tp_size={tp_size!r}")
    for name, value in (("tp_rank", tp_rank), ("tp_size", tp_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ValueError(f"need 0 <= tp_rank < tp_size, got tp_rank={tp_rank} and tp_size={tp_size}")
    return [("tp_rank", str(tp_rank)), ("tp_size", str(tp_size))]


def state_dict_index(query: StateDictQuery) -> Call[StateDictIndex]:
    return Call("GET", f"/v1/models/{_seg(query.model_id)}/state_dict", _as(StateDictIndex), params=query.params)


def shard_path(model_id: str, index: int) -> str:
    return f"/v1/models/{_seg(model_id)}/state_dict/{int(index)}"


def shard(query: StateDictQuery, index: int, method: str = "GET") -> Call[Any]:
    """Shard ``index`` of ``query``: its body is read by a driver, not parsed (GET); a
    ``HEAD`` answers its headers (the ETag a download resumes against)."""
    parse: Callable[[httpx.Response], Any] = _headers if method == "HEAD" else _nothing
    return Call(method, shard_path(query.model_id, index), parse, params=query.params)


def _headers(response: httpx.Response) -> httpx.Headers:
    return response.headers


# ------------------------------------------------------------------ the Hub endpoint

HUB_NAMESPACE = "megaload"


def _json(response: httpx.Response) -> Any:
    return response.json()


def hub_model_info(model_id: str) -> Call[dict[str, Any]]:
    """The model info of repository ``megaload/<id>`` on the service's Hub endpoint (its
    commit ``sha`` and files, ``siblings``)."""
    return Call("GET", f"/hf/api/models/{HUB_NAMESPACE}/{_seg(model_id)}/revision/main", _json)


def hub_file(model_id: str, commit: str, filename: str) -> Call[bytes]:
    """One file of repository ``megaload/<id>`` at ``commit``, whole."""
    path = f"/hf/{HUB_NAMESPACE}/{_seg(model_id)}/resolve/{_seg(commit)}/{quote(filename)}"
    return Call("GET", path, lambda response: response.content)


# ------------------------------------------------------------------ jobs


def list_jobs() -> Call[JobList]:
    return Call("GET", "/v1/jobs", _as(JobList))


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{_seg(job_id)}", _as(Job))


def cancel_job(job_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/jobs/{_seg(job_id)}", _nothing)
