"""The multi-rank protocol under torchrun: rank 0 serves HTTP, the others follow.

Rank 0 broadcasts each command object (``dist.broadcast_object_list``) before running it;
every other rank waits for the next one in :meth:`RankProtocol.follow` and runs the same
handler, so the collectives inside the handlers meet. While idle, rank 0 broadcasts a
:class:`~megaload.engine.commands.Heartbeat` (a barrier) every ``heartbeat_seconds``, well
within the collective timeout, so that a follower waiting never times out and a dead rank is
noticed. Rank 0 ends the loop by broadcasting :class:`~megaload.engine.commands.Shutdown`.

A failed collective (a rank died, hung past the collective timeout, or the group broke)
leaves the distributed context unusable: :meth:`RankProtocol.collective` hands the error to
``on_fatal``, the policy its owner chose (the engine's default: fail, then
:func:`exit_soon`), and re-raises it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from .commands import Command, Shutdown

__all__ = ["RankProtocol", "exit_soon", "heartbeat_interval"]

logger = logging.getLogger(__name__)


def heartbeat_interval(collective_timeout_seconds: float) -> float:
    """Seconds between rank 0's heartbeats: a quarter of the collective timeout, 1 to 30 s."""
    return max(1.0, min(30.0, collective_timeout_seconds / 4))


def exit_soon(delay_seconds: float = 1.0, status: int = 1) -> None:
    """End the process with ``status`` after ``delay_seconds`` (time for /readyz to answer
    503 and for the logs to flush), for the orchestrator to restart the job."""
    timer = threading.Timer(delay_seconds, os._exit, args=(status,))
    timer.daemon = True
    timer.start()


class RankProtocol:
    """One rank's side of the protocol; see the module docstring."""

    def __init__(self, rank: int, *, on_fatal: Callable[[BaseException], None]) -> None:
        self.rank = rank
        self._on_fatal = on_fatal

    def collective(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, a collective; its failure goes to ``on_fatal`` and is re-raised."""
        try:
            return fn(*args)
        except Exception as e:
            self._on_fatal(e)
            raise

    def broadcast(self, command: Command, *, fatal: bool = True) -> None:
        """Rank 0: send ``command`` to every other rank (a collective; with ``fatal=False``
        its failure is only raised, as for the last word of a shutdown)."""
        if fatal:
            self.collective(_broadcast, command)
        else:
            _broadcast(command)

    def follow(self, run: Callable[[Command], Any]) -> None:
        """Ranks other than 0: ``run`` each command rank 0 broadcasts, until ``Shutdown``.
        A command's error is logged (rank 0 reports it); no command within the collective
        timeout (rank 0 died or hung) ends the process with status 1."""
        while True:
            try:
                command = _receive()
            except Exception as e:
                logger.critical("rank %d: no command from rank 0 (%s: %s); exiting", self.rank, type(e).__name__, e)
                raise SystemExit(1) from None
            try:
                run(command)
            except Exception:
                logger.exception("rank %d: command %s failed", self.rank, command.name)
            if isinstance(command, Shutdown):
                return


def _broadcast(command: Command) -> None:
    import torch.distributed as dist

    dist.broadcast_object_list([command], src=0)


def _receive() -> Command:
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
