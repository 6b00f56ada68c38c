"""What the sync and async clients share: configuration, request building, answer handling.

Everything here is free of I/O. Each client's loop is, for every attempt::

    request = self._build_request(http, call)
    try:    response = send(request)
    except httpx.TransportError as exc:
            delay = self._delay_after_error(call, exc, retries)  # None: give up (raise)
    delay = self._delay_after_status(call, response, retries)     # None: answer is final
    return self._result(call, response)                           # parse or typed error
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import httpx

from ._direct_transport import DirectTransport
from ._environment import resolve_token
from ._exceptions import connection_error, make_status_error
from ._resume import ShardTransfer
from ._retry import RetryPolicy
from ._routes import Call
from ._version import __version__
from .types import StateDictIndex

__all__ = ["BaseClient", "DEFAULT_TIMEOUT", "DEFAULT_MAX_RETRIES", "DEFAULT_LOAD_TIMEOUT", "RESET_RETRIES_AFTER"]

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 3
# A load with wait=true answers when the model is resident: allow for big checkpoints.
DEFAULT_LOAD_TIMEOUT = httpx.Timeout(3600.0, connect=10.0)
# A streamed shard that made this much progress before breaking earns fresh retries.
RESET_RETRIES_AFTER = 1 << 20
DEFAULT_MAX_WORKERS = 4


def _timeout(value: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(value, httpx.Timeout):
        return value
    if value is None:
        return httpx.Timeout(None)
    return httpx.Timeout(float(value), connect=min(float(value), 10.0))


class BaseClient:
    """Configuration shared by :class:`Client` and :class:`AsyncClient`.

    ``token``: bearer token; when ``None``, ``$MEGALOAD_TOKEN`` is used if set.
    ``timeout``: seconds (or an ``httpx.Timeout``) for each request; ``None`` waits forever.
    ``max_retries``: retries of idempotent calls on connection errors, 429 and 503.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = _timeout(timeout)
        self.retry_policy = RetryPolicy(max_retries=max_retries)
        self._token = resolve_token(token)
        self._extra_headers = dict(headers or {})
        self._direct: DirectTransport | None = None  # set by a client that owns its httpx client

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

    # ---- decisions -----------------------------------------------------------------

    def _delay_after_status(self, call: Call[Any], response: httpx.Response, retries: int) -> float | None:
        """Seconds to wait before repeating ``call``, or ``None`` if this answer is final."""
        status = response.status_code
        if status < 400 or status in call.ok:
            return None
        if self.retry_policy.retry_on_status(status, idempotent=call.retryable, retries_done=retries):
            return self.retry_policy.delay(retries, response)
        return None

    def _delay_after_error(self, call: Call[Any], error: httpx.TransportError, retries: int) -> float:
        """Seconds to wait before repeating ``call``; raises the wrapped error to give up."""
        if self.retry_policy.retry_on_error(error, idempotent=call.retryable, retries_done=retries):
            return self.retry_policy.delay(retries)
        raise connection_error(error, error.request if _has_request(error) else None) from error

    def _result(self, call: Call[T], response: httpx.Response) -> T:
        if response.status_code >= 400 and response.status_code not in call.ok:
            raise make_status_error(response)
        return call.parse(response)

    # ---- shards --------------------------------------------------------------------

    def _shard_call(self, path: str, params: tuple[tuple[str, str], ...]) -> Call[None]:
        return Call("GET", path, lambda response: None, params=params)

    def _shard_headers(self, transfer: ShardTransfer) -> dict[str, str]:
        headers = self._default_headers()
        headers["Accept"] = "application/octet-stream, application/problem+json"
        headers.update(transfer.request_headers())
        return headers

    def _shard_request(
        self, http: httpx.Client | httpx.AsyncClient, call: Call[None], transfer: ShardTransfer
    ) -> httpx.Request:
        request = self._build_request(http, call)
        request.headers.update(self._shard_headers(transfer))
        return request

    @property
    def shard_transport(self) -> str:
        """What reads shard bodies: ``"direct"`` (the standard library, straight into
        their destination; see :mod:`megaload_client._direct_transport`) or ``"httpx"``
        (https, a caller's own ``http_client``, or a proxy set for the host)."""
        return "direct" if self._direct is not None else "httpx"

    @staticmethod
    def _retries_after_break(retries: int, transfer: ShardTransfer, offset_before: int) -> int:
        """A broken stream that made real progress does not use up the retry budget."""
        return 0 if transfer.offset - offset_before >= RESET_RETRIES_AFTER else retries


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True


def index_bytes(index: StateDictIndex) -> int:
    return sum(shard.size for shard in index.shards)
