"""Optional progress bars: tqdm when the caller asks for one and tqdm is installed."""

from __future__ import annotations

import threading
import warnings
from typing import Any

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar:
    """The no-op bar; :func:`progress_bar` returns a tqdm-backed one when it can.

    Safe to update from several threads (shards download in parallel).
    """

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar
        self._lock = threading.Lock()

    def update(self, n: float) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.update(n)

    def set_to(self, value: float, description: str | None = None) -> None:
        """Move to an absolute position (job progress is reported as a fraction)."""
        if self._bar is None:
            return
        with self._lock:
            if description is not None:
                self._bar.set_description_str(description, refresh=False)
            self._bar.update(value - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(enabled: bool, *, total: float | None, desc: str, unit: str = "B") -> ProgressBar:
    """A tqdm bar if ``enabled`` and tqdm imports; otherwise a bar that does nothing.

    Asking for a bar without tqdm installed warns once per call site and carries on.
    """
    if not enabled:
        return ProgressBar()
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:
        warnings.warn(
            "progress=True needs tqdm (pip install 'megaload-client[progress]'); no progress shown",
            RuntimeWarning,
            stacklevel=3,
        )
        return ProgressBar()
    scale = unit == "B"
    return ProgressBar(
        tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000)
    )
