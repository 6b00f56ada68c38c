"""Byte sizes as people write them, and as the command lines print them.

One syntax for every size a megaload command line or setting takes (``megaload serve
--memory-budget``, ``megaload export-hf --max-shard-size``, ``megaload-client download
--max-shard-bytes``, ...): a byte count (``1048576``), or a number and a unit, case-insensitive,
spaces allowed: decimal ``B``, ``K``/``KB``, ``M``/``MB``, ``G``/``GB``, ``T``/``TB`` (powers of
1000) and binary ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of 1024). Fractions are allowed with a
unit (``1.5GiB``). Output is always binary (IEC): ``format_size(4_456_448) == "4.2 MiB"``.

Imports only the standard library (the service imports it too).
"""

from __future__ import annotations

import re

__all__ = ["SIZE_UNITS", "SIZE_SYNTAX", "parse_size", "format_size"]

SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
SIZE_SYNTAX = "a byte count or a number with a unit: B, KB, MB, GB, TB (x1000) or KiB, MiB, GiB, TiB (x1024)"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_size(text: str | int) -> int:
    """Bytes that ``text`` names (``"64GiB"``, ``"500MB"``, ``"1048576"``); a positive ``int``
    passes through. ``ValueError`` saying what is accepted for anything else, zero included."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size: expected {SIZE_SYNTAX}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"a size must be positive, got {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if m is None:
        raise ValueError(f"{text!r} is not a size: expected {SIZE_SYNTAX}")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown unit {m.group(2)!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    if "." in number and unit in ("", "b"):
        raise ValueError(f"{text!r}: a byte count must be a whole number")
    size = int(float(number) * SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return size


def format_size(n: int | float | None) -> str:
    """``n`` bytes in binary units, one decimal above 1 KiB: ``512 B``, ``4.2 MiB``; ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _IEC:
        if abs(value) < 1024 or unit == _IEC[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
