"""``megaload-client``: the command line of the client SDK (``python -m megaload_client``).

    megaload-client [--url URL] [--token TOKEN] [--json] COMMAND ...

The URL comes from ``--url``, else ``$MEGALOAD_URL``, else ``http://127.0.0.1:8000``; the
token from ``--token``, else ``$MEGALOAD_TOKEN``. ``--json`` (before or after the command)
prints the service's answer as JSON on standard output instead of text.

Errors print one line (for a service error: its status, title and detail) to standard error;
under ``--json`` they are one JSON document on standard error instead, always of the shape
``{"error": {"type": ..., "status": ..., "title": ..., "detail": ...}}`` (``type`` is the
problem type URI for an error of the service, else one of :data:`ERROR_TYPES`; ``status`` the
HTTP status or null; ``errors``, ``job`` and ``request_id`` are added when known). Exit
status: 0, 1 for an error, 2 for bad arguments, 130 when interrupted, 141 when standard
output is closed early (``| head``), as a program killed by SIGPIPE reports.

Sizes given (``--max-shard-bytes``) take :mod:`megaload_client.sizes`' syntax (``1MiB``,
``500MB``, bytes); sizes printed are binary (``4.2 MiB``). Progress bars (on standard error)
are on by default when standard output and standard error are both terminals and tqdm is
installed; ``--progress`` forces them on, ``--no-progress`` off.

The parser is in ``_parser``, the commands in ``_commands``, what they print in ``_output``,
and how errors are reported in ``_errors``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .._client import Client
from .._environment import resolve_url
from ._commands import run_command
from ._errors import ERROR_TYPES, EXIT_BROKEN_PIPE, report
from ._output import Output
from ._parser import build_parser

__all__ = ["main", "build_parser", "ERROR_TYPES"]


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the arguments (before any ``--``): for errors met while parsing them."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``megaload-client`` with ``argv`` (default: ``sys.argv[1:]``); its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(arguments)
    try:
        try:
            args = build_parser().parse_args(arguments)
            as_json = getattr(args, "json", False)
            with Client(resolve_url(args.url), token=args.token, timeout=args.timeout,
                        max_retries=args.retries) as client:
                status = run_command(args, client, Output(as_json))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return status
        except BrokenPipeError:
            raise
        except (Exception, KeyboardInterrupt) as error:
            return report(error, as_json)
    except BrokenPipeError:
        # stdout was closed early (| head): exit quietly, as a program killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
