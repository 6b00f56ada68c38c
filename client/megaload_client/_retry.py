"""When to retry a request, and how long to wait first.

Pure policy, no I/O: both clients ask the same questions and only differ in how they sleep.

A request is retried when all of these hold:

* the call is idempotent (GET, HEAD, DELETE, PUT, OPTIONS, or a POST the API declares
  idempotent, such as loading a model: the same load gives the same model id);
* the failure is transient: the connection failed or dropped, or the answer is 429 or 503;
* fewer than ``max_retries`` retries were made.

One exception to the first rule: when the connection could not even be *established*
(``httpx.ConnectError``, ``httpx.ConnectTimeout``) the request never left this process, so
any call may be retried.

The wait before retry ``n`` (0-based) is ``min(0.5 * 2**n, 8)`` seconds, scaled by a jitter
factor drawn from ``[0.75, 1.0]``, unless the server sent ``Retry-After``: then its value is
honoured (as delta-seconds or an HTTP date), capped at ``max_retry_after`` seconds.

A streamed shard that broke after receiving at least :data:`RESET_RETRIES_AFTER` bytes in
that attempt earns its retry budget back: a long transfer over a flaky link keeps going
while it makes progress.

:class:`Attempts` applies the policy to one call; every request path (plain requests, shard
bodies over httpx or the direct transport, header probes) asks it after each attempt::

    attempts = Attempts(policy, call)
    ... send ...
    delay = attempts.after_status(response)           # None: this answer is final
    delay = attempts.after_error(exc, progressed=n)   # raises APIConnectionError to give up
    ... sleep(delay); attempts.next() ...
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import connection_error

__all__ = ["RetryPolicy", "Attempts", "IDEMPOTENT_METHODS", "RETRYABLE_STATUS", "RESET_RETRIES_AFTER", "parse_retry_after"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "PUT", "OPTIONS"})
RETRYABLE_STATUS = frozenset({429, 503})
# A streamed shard that made this much progress before breaking earns fresh retries.
RESET_RETRIES_AFTER = 1 << 20

# Raised before any byte of the request went out: safe to retry whatever the method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` when absent or invalid.

    Accepts delta-seconds (``"3"``, also fractional ``"1.5"``) and HTTP dates
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative, inf
            return None
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """Decides whether and when to retry. ``rng`` exists so tests can fix the jitter."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def backoff(self, retry: int) -> float:
        """Wait before retry number ``retry`` (0 for the first retry), jitter included."""
        ceiling = min(self.base_delay * 2**retry, self.max_delay)
        return ceiling * (1.0 - 0.25 * self.rng.random())

    def delay(self, retry: int, response: httpx.Response | None = None) -> float:
        """Wait before retry ``retry``: the server's ``Retry-After`` when it gave one."""
        if response is not None:
            asked = parse_retry_after(response.headers.get("retry-after"))
            if asked is not None:
                return min(asked, self.max_retry_after)
        return self.backoff(retry)

    def retry_on_status(self, status: int, *, idempotent: bool, retries_done: int) -> bool:
        return idempotent and status in RETRYABLE_STATUS and retries_done < self.max_retries

    def retry_on_error(self, error: BaseException, *, idempotent: bool, retries_done: int) -> bool:
        if retries_done >= self.max_retries or not isinstance(error, httpx.TransportError):
            return False
        if isinstance(error, _NOT_SENT):
            return True
        return idempotent


def is_idempotent(method: str) -> bool:
    return method.upper() in IDEMPOTENT_METHODS


class Attempts:
    """The retry state of one call (anything with ``retryable`` and ``ok``, a
    :class:`~._routes.Call`) under ``policy``: I/O-free, its driver sends and sleeps."""

    def __init__(self, policy: RetryPolicy, call: Any) -> None:
        self.policy = policy
        self.call = call
        self.retries = 0

    def after_status(self, response: httpx.Response) -> float | None:
        """Seconds to wait before trying again, or ``None`` if this answer is final."""
        status = response.status_code
        if status < 400 or status in self.call.ok:
            return None
        if self.policy.retry_on_status(status, idempotent=self.call.retryable, retries_done=self.retries):
            return self.policy.delay(self.retries, response)
        return None

    def after_error(self, error: httpx.TransportError, *, progressed: int = 0) -> float:
        """Seconds to wait before trying again; raises the typed error to give up.

        ``progressed``: bytes a broken stream received in this attempt (see
        :data:`RESET_RETRIES_AFTER`)."""
        if progressed >= RESET_RETRIES_AFTER:
            self.retries = 0
        if self.policy.retry_on_error(error, idempotent=self.call.retryable, retries_done=self.retries):
            return self.policy.delay(self.retries)
        raise connection_error(error, _request_of(error)) from error

    def next(self) -> None:
        """The wait is over: the next attempt starts."""
        self.retries += 1


def _request_of(error: httpx.TransportError) -> httpx.Request | None:
    try:
        return error.request
    except RuntimeError:  # no request attached
        return None
