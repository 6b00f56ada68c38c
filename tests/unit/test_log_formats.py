"""The log formats write one record per line whatever the message holds."""

from __future__ import annotations

import json
import logging

from megaload.logs import JsonFormatter, RequestIdFilter, TextFormatter, escape_control

FORGED = "\n2026-01-01 00:00:00,000 ERROR   megaload [-] forged"


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    record = logging.LogRecord("megaload.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    RequestIdFilter().filter(record)
    return record


def test_escape_control_names_what_it_escapes():
    assert escape_control("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert escape_control("\x1b[31m\x00\x7f\x85\u2028\u2029") == "\\x1b[31m\\x00\\x7f\\x85\\u2028\\u2029"
    assert escape_control("caf\u00e9 \u4e2d plain") == "caf\u00e9 \u4e2d plain"  # printable text untouched


def test_text_records_and_their_tracebacks_stay_one_record():
    formatter = TextFormatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")
    try:
        raise ValueError("bad path" + FORGED)
    except ValueError as e:
        out = formatter.format(_record("GET %s -> 500", "/x" + FORGED, exc_info=(type(e), e, e.__traceback__)))
    first, *rest = out.splitlines()
    assert "/x\\n2026-01-01" in first
    assert rest and all(line.startswith("    ") for line in rest)  # the traceback, indented
    assert "forged" in rest[-1]


def test_json_records_are_one_line_and_keep_the_value():
    out = JsonFormatter().format(_record("GET %s", "/x\x85y\u2028z\x1b" + FORGED))
    assert len(out.splitlines()) == 1
    assert json.loads(out)["message"] == "GET /x\x85y\u2028z\x1b" + FORGED
