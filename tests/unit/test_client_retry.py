"""Retry policy of the client: which failures are retried, and how long it waits."""

from __future__ import annotations

import email.utils
import random
import time

import httpx
import pytest

import megaload_client as mc
from megaload_client import RetryPolicy
from megaload_client import _exchange as exchange
from megaload_client import _routes as routes
from megaload_client._retry import RESET_RETRIES_AFTER, Attempts, parse_retry_after


def _response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://x/v1/info"))


@pytest.mark.parametrize("retry, ceiling", [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (20, 8.0)])
def test_backoff_doubles_from_half_a_second_up_to_eight_with_jitter_below(retry, ceiling):
    policy = RetryPolicy(rng=random.Random(retry))
    waits = [policy.backoff(retry) for _ in range(200)]
    assert all(0.75 * ceiling <= w <= ceiling for w in waits)
    assert len(set(waits)) > 1  # jittered, not constant


def test_jitter_is_reproducible_with_a_seeded_rng():
    assert RetryPolicy(rng=random.Random(7)).backoff(2) == RetryPolicy(rng=random.Random(7)).backoff(2)


def test_retry_after_seconds_is_honoured_over_backoff():
    policy = RetryPolicy()
    assert policy.delay(4, _response(503, **{"Retry-After": "2"})) == 2.0
    assert policy.delay(0, _response(429, **{"Retry-After": "0"})) == 0.0


def test_retry_after_is_capped():
    assert RetryPolicy(max_retry_after=5).delay(0, _response(503, **{"Retry-After": "3600"})) == 5


def test_invalid_retry_after_falls_back_to_backoff():
    policy = RetryPolicy(rng=random.Random(1))
    wait = policy.delay(1, _response(503, **{"Retry-After": "soon"}))
    assert 0.75 <= wait <= 1.0


def test_retry_after_http_date():
    now = time.time()
    later = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(later, now=now) <= 31
    earlier = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "  ", "-1", "nan", "inf", "tomorrow", "Mon, 99 Foo 2020"])
def test_unusable_retry_after_values(value):
    assert parse_retry_after(value) is None


def test_fractional_retry_after():
    assert parse_retry_after("1.5") == 1.5


@pytest.mark.parametrize("status", [429, 503])
def test_transient_statuses_are_retried_for_idempotent_calls_only(status):
    policy = RetryPolicy(max_retries=2)
    assert policy.retry_on_status(status, idempotent=True, retries_done=0)
    assert policy.retry_on_status(status, idempotent=True, retries_done=1)
    assert not policy.retry_on_status(status, idempotent=True, retries_done=2)
    assert not policy.retry_on_status(status, idempotent=False, retries_done=0)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 416, 422, 500, 502, 507])
def test_other_statuses_are_never_retried(status):
    assert not RetryPolicy().retry_on_status(status, idempotent=True, retries_done=0)


def test_broken_connections_are_retried_for_idempotent_calls():
    policy = RetryPolicy(max_retries=1)
    dropped = httpx.RemoteProtocolError("peer closed connection")
    assert policy.retry_on_error(dropped, idempotent=True, retries_done=0)
    assert not policy.retry_on_error(dropped, idempotent=True, retries_done=1)
    assert not policy.retry_on_error(dropped, idempotent=False, retries_done=0)
    assert not policy.retry_on_error(httpx.ReadTimeout("slow"), idempotent=False, retries_done=0)


def test_a_connection_never_established_is_retried_whatever_the_method():
    policy = RetryPolicy(max_retries=1)
    assert policy.retry_on_error(httpx.ConnectError("refused"), idempotent=False, retries_done=0)
    assert policy.retry_on_error(httpx.ConnectTimeout("slow"), idempotent=False, retries_done=0)
    assert not policy.retry_on_error(httpx.ConnectError("refused"), idempotent=False, retries_done=1)


def test_non_transport_errors_are_not_retried():
    assert not RetryPolicy().retry_on_error(ValueError("bug"), idempotent=True, retries_done=0)


def test_zero_retries_disables_retrying_and_negative_is_refused():
    assert not RetryPolicy(max_retries=0).retry_on_status(503, idempotent=True, retries_done=0)
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)


# ---------------------------------------------------------------------- one call's attempts


def _refused() -> httpx.ConnectError:
    return httpx.ConnectError("refused", request=httpx.Request("GET", "http://x/v1/info"))


def _broken() -> httpx.ReadError:
    return httpx.ReadError("reset", request=httpx.Request("POST", "http://x/v1/models/m/save"))


def test_attempts_give_up_after_max_retries_with_the_typed_error():
    attempts = Attempts(RetryPolicy(max_retries=2), routes.info())
    for _ in range(2):
        assert attempts.after_error(_refused()) > 0
        attempts.next()
    with pytest.raises(mc.APIConnectionError, match="refused"):
        attempts.after_error(_refused())


def test_a_stream_that_made_progress_before_breaking_earns_its_retries_back():
    attempts = Attempts(RetryPolicy(max_retries=1, rng=random.Random(0)), routes.info())
    attempts.after_error(_refused())
    attempts.next()
    assert attempts.after_error(_refused(), progressed=RESET_RETRIES_AFTER) > 0  # budget reset, not spent
    assert attempts.retries == 0
    attempts.next()
    with pytest.raises(mc.APIConnectionError):
        attempts.after_error(_refused(), progressed=RESET_RETRIES_AFTER - 1)


def test_a_broken_save_is_not_repeated_but_one_never_sent_is():
    save = routes.save_model("m", mc.types.SaveModelRequest(path="/o"))
    with pytest.raises(mc.APIConnectionError):
        Attempts(RetryPolicy(), save).after_error(_broken())
    assert Attempts(RetryPolicy(), save).after_error(_refused()) > 0


def test_the_request_exchange_retries_refusals_and_503s_then_parses():
    """The steps one call takes, driven by hand: what every driver does with sockets."""
    with mc.Client("http://x", max_retries=3) as client:
        call = routes.health()
        steps = exchange.request(client, call)
        assert steps.send(None) == exchange.Send(call)
        sleep = steps.throw(_refused())
        assert isinstance(sleep, exchange.Sleep) and sleep.seconds <= 0.5
        assert isinstance(steps.send(None), exchange.Send)
        busy = _response(503, **{"retry-after": "2"})
        assert steps.send(busy) == exchange.Close(busy)
        assert steps.send(None) == exchange.Sleep(2.0)
        assert isinstance(steps.send(None), exchange.Send)
        with pytest.raises(StopIteration) as done:
            steps.send(httpx.Response(200, json={"status": "ok"}, request=httpx.Request("GET", "http://x/healthz")))
    assert done.value.value == mc.Health(status="ok")
