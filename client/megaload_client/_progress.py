"""Optional progress bars: tqdm when the caller asks for one and tqdm is installed.

Byte bars count in binary units (``4.2 MiB/4.2 MiB [00:01, 3.9 MiB/s]``, as
:func:`~megaload_client.sizes.format_size` prints sizes); percent bars (jobs) show the
percentage, the elapsed time and the job's phase, and no rate.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from .sizes import format_size

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
                self._bar.set_postfix_str(description, refresh=False)
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
    if unit == "B":
        return ProgressBar(_byte_bar_class(tqdm)(total=total, desc=desc, unit="B", bar_format=_BYTE_FORMAT))
    if unit == "%":
        return ProgressBar(tqdm(total=total, desc=desc, unit="%", bar_format=_PERCENT_FORMAT))
    return ProgressBar(tqdm(total=total, desc=desc, unit=unit))


_BYTE_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_iec}/{total_iec} [{elapsed}<{remaining}, {rate_iec}{postfix}]"
_PERCENT_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]"


def _byte_bar_class(tqdm: type) -> type:
    """``tqdm`` whose bar formats bytes as :func:`format_size` does (binary units)."""

    class ByteBar(tqdm):
        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            rate = d.get("rate") or (d["n"] / d["elapsed"] if d.get("elapsed") else None)
            d["n_iec"] = format_size(d["n"])
            d["total_iec"] = format_size(d["total"]) if d.get("total") is not None else "?"
            d["rate_iec"] = f"{format_size(rate)}/s" if rate else "?/s"
            return d

    return ByteBar
