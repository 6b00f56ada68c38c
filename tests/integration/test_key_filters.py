"""``keys`` filters run in time linear in the key length, and no filter freezes the service.

A ``keys`` pattern is a regular expression matched at the start of each key. Python's ``re``
backtracks: ``(?:.|.){1,26}!`` tries 2**26 ways to split each key before failing. Before
filters were compiled by a linear-time engine, that one request held the GIL in a worker
thread that cannot be cancelled: on the ``mlm_gpt`` fixture (15 keys, about 8.6 s of
backtracking each) the request had no answer within 60 s, and ``/healthz``, answered only
between two keys, took 2.7 s (median) and up to 8.1 s. After: the request answers in 44 ms
and ``/healthz`` within 8 ms (median 1.8 ms) while it runs.

``/healthz`` is probed from a child process, as a real client would, so the probe does not
share this process's GIL with the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from megaload_client import problems

_PROBE = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
out = []
with httpx.Client(base_url=url, timeout=120) as c:
    c.get("/healthz")
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        c.get("/healthz")
        out.append(time.perf_counter() - t)
        time.sleep(0.01)
print(json.dumps(out), flush=True)
"""

CATASTROPHIC = "(?:.|.){1,26}!"
# Bounds for what must hold (not performance figures): the backtracking engine took minutes.
ANSWER_BOUND_S = 15.0
HEALTHZ_BOUND_S = 1.0


@pytest.fixture(scope="module")
def model_id(service) -> str:
    r = service.load("mlm_gpt")
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _index(service, model_id: str, keys) -> httpx.Response:
    return service.client.get(f"/v1/models/{model_id}/state_dict", params={"keys": keys})


def test_a_backtracking_pattern_answers_at_once_and_healthz_stays_responsive(service, model_id):
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, service.base_url, "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert probe.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        with httpx.Client(base_url=service.base_url, timeout=ANSWER_BOUND_S) as c:
            urls = [f"/v1/models/{model_id}/state_dict", f"/v1/models/{model_id}/state_dict/0"]
            answers = [c.get(url, params={"keys": CATASTROPHIC}) for url in urls]
        took = time.perf_counter() - started
        latencies = json.loads(probe.communicate(timeout=120)[0])
    finally:
        probe.kill()
    assert took < ANSWER_BOUND_S
    index, shard = answers
    for answer in answers:  # no key has a '!' within its first 27 characters
        assert answer.status_code == 404 and answer.json()["type"] == problems.KEYS_NOT_FOUND, answer.text
    assert latencies and max(latencies) < HEALTHZ_BOUND_S, f"/healthz took up to {max(latencies):.3f}s"


def test_the_most_patterns_each_backtracking_answer_at_once(service, model_id):
    everything = _index(service, model_id, None).json()["weight_map"]
    patterns = [f"(?:.|.){{1,{20 + i % 10}}}#{i}" for i in range(63)] + ["model.decoder.layers.0."]
    with httpx.Client(base_url=service.base_url, timeout=ANSWER_BOUND_S) as c:
        r = c.get(f"/v1/models/{model_id}/state_dict", params={"keys": patterns})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["weight_map"]) == sorted(k for k in everything if k.startswith("model.decoder.layers.0."))


def test_prefixes_and_regular_expressions_as_documented(service, model_id):
    everything = _index(service, model_id, None).json()["weight_map"]
    layer0 = [k for k in everything if k.startswith("model.decoder.layers.0.")]
    assert layer0
    r = _index(service, model_id, "model.decoder.layers.0.")
    assert r.status_code == 200 and sorted(r.json()["weight_map"]) == sorted(layer0)
    # matched at the start of the key, not anywhere in it: a filter that matches no key is a
    # 404 naming the filter and the prefixes the keys do have
    missed = _index(service, model_id, "decoder.layers.0.")
    assert missed.status_code == 404 and missed.headers["content-type"] == "application/problem+json"
    body = missed.json()
    assert body["type"] == problems.KEYS_NOT_FOUND and body["field"] == "keys"
    assert body["key_prefixes"] == ["model.embedding", "model.decoder", "model.output_layer"]
    assert "'decoder.layers.0.'" in body["detail"] and "model.decoder" in body["detail"]
    # repeatable: a key is kept when any pattern matches
    both = _index(service, model_id, ["model.decoder.layers.0.", "model.embedding."]).json()["weight_map"]
    assert sorted(both) == sorted(k for k in everything if k.startswith(("model.decoder.layers.0.", "model.embedding.")))
    regex = _index(service, model_id, r"model\.decoder\.layers\.[0-9]+\.mlp\.").json()["weight_map"]
    assert regex and all(".mlp." in k for k in regex)
    assert sorted(regex) == sorted(k for k in everything if k.startswith("model.decoder.layers.") and ".mlp." in k)


@pytest.mark.parametrize(
    "pattern, why",
    [
        ("(", "missing"),
        (r"(a)\1", "escape"),  # back-references need backtracking
        ("(?=model)", "perl operator"),  # look-around too
        ("model" + "(?:a{1,1000}){1,1000}", "repetition"),
    ],
)
def test_refused_patterns_are_400_problems_naming_keys(service, model_id, pattern, why):
    r = _index(service, model_id, ["model.", pattern])
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == problems.BAD_REQUEST and body["field"] == "keys"
    assert why in body["detail"], body["detail"]
