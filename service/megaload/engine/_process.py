"""Process-wide tuning for a process whose event loop must answer while the engine works.

Three settings, each applied once at start-up (all idempotent):

* :func:`shorten_gil_switch_interval`, by :meth:`Engine.start` on the thread that starts the
  engine: 1 ms instead of 5 ms, so the event loop waiting for the GIL gets it back sooner
  while the engine thread runs Python between C calls.
* :func:`set_huge_page_policy`, by :meth:`Engine.start` too: the ``huge_pages`` setting, as the
  ``MEGALOAD_HUGE_PAGES`` variable the library's loads read (``checkpoint/_huge_pages.py``), so
  a ``--huge-pages`` flag reaches them as the variable does.
* :func:`freeze_heap`, the last step of the engine's start-up command, once the library is
  imported (importing it on the event loop would hold the service's start-up for seconds):
  every object alive then (torch, megatron, their modules) leaves the garbage collector's
  view, so later collections, which hold the GIL, walk only objects created since.
"""

from __future__ import annotations

import gc
import os
import sys

# the library's variable (checkpoint/_huge_pages.py; named here to keep torch out of this import)
HUGE_PAGES_ENV = "MEGALOAD_HUGE_PAGES"

__all__ = ["shorten_gil_switch_interval", "set_huge_page_policy", "freeze_heap"]

GIL_SWITCH_INTERVAL_SECONDS = 0.001


def shorten_gil_switch_interval() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)


def set_huge_page_policy(value: str) -> None:
    os.environ[HUGE_PAGES_ENV] = value


def freeze_heap() -> None:
    import megatron.core.dist_checkpointing  # noqa: F401
    import megatron.core.models.gpt  # noqa: F401

    gc.collect()
    gc.freeze()
