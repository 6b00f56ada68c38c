r"""Logging: a request id on every line, text or JSON lines, one record per line.

The request id lives in a context variable set by the request middleware
(:mod:`megaload.api.middleware`); :class:`RequestIdFilter` copies it onto each record, so a
log line written anywhere while a request is handled carries it (``-`` outside requests).

What a request sends (a path, a header, a name in a checkpoint) ends up in log messages, so
no record may contain a line break or a terminal control sequence of its own: the text
format writes control characters (C0, DEL, C1, U+2028 and U+2029) as escapes (``\n``,
``\x1b``, ``\u2028``) and indents every line of a traceback, so a line that starts with a
timestamp is always a record; the JSON format escapes the same characters inside its
strings. Python warnings are routed through logging, so they get the same format.

Below ``debug``, :func:`quiet_third_party` keeps out of the log what a user of the service can
neither act on nor needs: megatron-core's notes about optional accelerators it falls back from
("Transformer Engine and Apex are not installed", "Apex is not installed", the Megatron-FSDP INFO
lines; the service logs its own view of the device) and torch.distributed.checkpoint's
deprecation notices met on every first load (ShardedTensor, ``load_state_dict``). Each is
matched by category, message and module; any other warning still shows. ``--log-level debug``
shows all.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import warnings
from datetime import UTC, datetime

__all__ = [
    "configure_logging",
    "quiet_third_party",
    "current_request_id",
    "request_id_var",
    "RequestIdFilter",
    "TextFormatter",
    "JsonFormatter",
    "escape_control",
]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("megaload_request_id", default=None)

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
# (category, message regex, module regex) of the warnings quiet_third_party ignores.
_QUIET_WARNINGS = (
    # megatron-core, at import and when it builds layers, when an optional accelerator is absent
    (UserWarning, r"(Transformer Engine and Apex are|Apex is|Transformer Engine is) not installed", r"megatron[._]"),
    # torch.distributed.checkpoint, reading megatron-core's sharded tensors
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor", r"torch\.distributed\."),
    (FutureWarning, r"`load_state_dict` is deprecated", r"megaload\.checkpoint\."),  # the reader's call
)
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# C0 controls, DEL, C1 controls (NEL, U+0085, among them) and the Unicode line and paragraph
# separators: everything str.splitlines() or a terminal would act on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    c = match.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape_control(text: str) -> str:
    r"""``text`` with control characters written as escapes (``\n``, ``\x1b``, ``\u2028``)."""
    return _CONTROL.sub(_escape_one, text)


def _json_escape_one(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """The text format; control characters escaped, tracebacks indented (module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_control(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        return _indented(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_control(line) for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in out and not key.startswith("_") and key != "color_message":
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls; DEL, C1 and U+2028/9 it writes as they are. Each can
        # only stand inside a JSON string here, where \uXXXX means the same character.
        return _CONTROL.sub(_json_escape_one, json.dumps(out, ensure_ascii=False))


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Route the root logger (and uvicorn's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # the middleware logs requests
    logging.captureWarnings(True)  # warnings.warn(...) becomes a record of logger "py.warnings"
    quiet_third_party(level)


def quiet_third_party(level: str = "info") -> None:
    """Below ``debug``: ignore :data:`_QUIET_WARNINGS` and megatron-core's INFO lines."""
    if level.lower() == "debug":
        return
    for category, message, module in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logging.getLogger("megatron").setLevel(logging.WARNING)
