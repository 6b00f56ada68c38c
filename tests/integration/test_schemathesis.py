"""Schemathesis against a real server, with and without a token: no server errors, and every
response conforms to the OpenAPI schema (status codes, content types, headers, bodies,
405s with their ``Allow``; with a token, that every guarded operation refuses a request
without one).

The schemathesis CLI runs as a child process against the server on a loopback port, with a
fixed seed and at most :data:`MAX_EXAMPLES` generated cases per operation (about 950 requests
and 15 s per run here). The checks that judge how the service reads valid or invalid input
(``positive_data_acceptance``, ``negative_data_rejection``) are left out on purpose: the
schema states limits the service checks itself, with a 400 that names them (a path that
resolves past PATH_MAX, a component over 255 bytes of UTF-8), and the service accepts dtype
spellings in any case while the schema lists them lower-cased.

The first run of this test found a 500: a relative path of 16 components of 255 characters
is within the schema's limits, but joined to its root it outgrew PATH_MAX and ``stat`` failed
with ENAMETOOLONG; such a path is now a 400.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

MAX_EXAMPLES = 10
SEED = 20261201
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]
TOKEN = "schemathesis-token-0123456789abcdef"


def _schemathesis(base_url: str, cwd, *, token: str | None) -> subprocess.CompletedProcess:
    checks = CHECKS + (["ignored_auth"] if token is not None else [])
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--checks", ",".join(checks),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "60",
        "--output-truncate", "true",
    ]  # fmt: skip
    if token is not None:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(start, tmp_path, token):
    options = {"token": token} if token is not None else {}
    with start(**options) as svc:
        run = _schemathesis(svc.base_url, tmp_path, token=token)
    summary = run.stdout[-6000:] + run.stderr[-2000:]
    assert "No module named schemathesis" not in run.stderr, "install the test extra: pip install -e '.[test]'"
    assert run.returncode == 0, summary
    assert " passed" in run.stdout and "generated" in run.stdout, summary
