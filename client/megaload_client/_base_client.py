"""What the sync and async clients share: configuration, request building, answer
handling, and the plans of the state-dict calls. Free of I/O.

Each client is a facade over the same exchanges (:mod:`._exchange`: a call with its
retries, a shard body with its resumption, ...) and the same plans (:mod:`._plans`); it
owns a driver that performs them (:mod:`._drivers`) and differs from the other client only
in how it waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _routes as routes
from ._checksums import TensorVerifier
from ._destinations import Destinations
from ._direct_transport import DirectDriver, direct_driver_for
from ._environment import resolve_token, resolve_url
from ._exceptions import make_status_error
from ._plans import AsStream, IntoBuffers, IntoTensors, ToFiles
from ._resume import ShardTransfer
from ._retry import RetryPolicy
from ._routes import Call, StateDictQuery
from ._safetensors import require_torch
from ._version import __version__
from .types import StateDictIndex

if TYPE_CHECKING:
    import torch

__all__ = ["BaseClient", "DEFAULT_TIMEOUT", "DEFAULT_MAX_RETRIES", "DEFAULT_LOAD_TIMEOUT", "DEFAULT_MAX_WORKERS"]

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 3
# A load with wait=true answers when the model is resident: allow for big checkpoints.
DEFAULT_LOAD_TIMEOUT = httpx.Timeout(3600.0, connect=10.0)
DEFAULT_MAX_WORKERS = 4


def _timeout(value: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    if value is None:
        return httpx.Timeout(None)
    return httpx.Timeout(float(value), connect=min(float(value), 10.0))


class BaseClient:
    """Configuration shared by :class:`Client` and :class:`AsyncClient`.

    ``base_url``: when ``None``, ``$MEGALOAD_URL``, else ``http://127.0.0.1:8000`` (as the
    command line; :func:`~._environment.resolve_url`).
    ``token``: bearer token; when ``None``, ``$MEGALOAD_TOKEN`` is used if set.
    ``timeout``: seconds (or an ``httpx.Timeout``) for each request; ``None`` waits forever.
    ``max_retries``: retries of idempotent calls on connection errors, 429 and 503.
    """

    def __init__(self, base_url: str | None, *, token: str | None, timeout: float | httpx.Timeout | None,
                 max_retries: int, headers: Mapping[str, str] | None, http_client: object) -> None:
        base_url = resolve_url(None) if base_url is None else base_url
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = _timeout(timeout)
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self._token = resolve_token(token)
        self._extra_headers = dict(headers or {})
        self._owns_http = http_client is None
        # Shard bodies: straight into their destination, unless the caller brought an httpx client.
        self._direct: DirectDriver | None = direct_driver_for(self) if http_client is None else None

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    def _default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"megaload-client/{__version__}", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(self._extra_headers)
        return headers

    def _build_request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        # Full URL and our headers on every request, so a caller's own httpx client works too.
        return http.build_request(
            call.method,
            self.base_url + call.path,
            params=list(call.params) or None,
            json=call.json,
            headers=self._default_headers(),
            timeout=self.timeout if call.timeout is ... else _timeout(call.timeout),
        )

    def _result(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400 and response.status_code not in call.ok:
            raise make_status_error(response)
        return call.parse(response)

    # ---- shards --------------------------------------------------------------------

    def _shard_headers(self, transfer: ShardTransfer) -> dict[str, str]:
        headers = self._default_headers()
        headers["Accept"] = "application/octet-stream, application/problem+json"
        headers.update(transfer.request_headers())
        return headers

    @property
    def shard_transport(self) -> str:
        """What reads shard bodies: ``"direct"`` (the standard library, straight into
        their destination; see :mod:`megaload_client._direct_transport`) or ``"httpx"``
        (https, a caller's own ``http_client``, or a proxy set for the host)."""
        return "direct" if self._direct is not None else "httpx"

    # ---- state dict plans -----------------------------------------------------------

    @staticmethod
    def _query(*options: Any, tensors: bool = False) -> StateDictQuery:
        """The query of a state-dict call (``tensors``: one that makes torch tensors)."""
        if tensors:
            require_torch()
        return routes.state_dict_query(*options)

    @staticmethod
    def _state_dict_plan(
        index: StateDictIndex, query: StateDictQuery, verify: bool, progress: bool,
        out: Mapping[str, torch.Tensor] | None, strict: bool,
    ) -> IntoBuffers | IntoTensors:
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)
        if out is None:
            return IntoBuffers(query, index, verifier, progress)
        return IntoTensors(query, index, verifier, progress, Destinations(out, index, strict=strict))

    @staticmethod
    def _stream_plan(index: StateDictIndex, query: StateDictQuery, verify: bool) -> AsStream:
        return AsStream(query, index, TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify))

    @staticmethod
    def _download_plan(
        index: StateDictIndex, query: StateDictQuery, directory: str | Path, verify: bool, progress: bool,
        allow_foreign_files: bool,
    ) -> ToFiles:
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)
        return ToFiles(query, index, verifier, progress, Path(directory), allow_foreign_files=allow_foreign_files)
