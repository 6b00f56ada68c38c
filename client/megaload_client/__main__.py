"""``python -m megaload_client`` and the ``megaload-client`` console script.

The command line itself is :mod:`megaload_client._cli`: its parser, commands, output and
error reporting.
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
