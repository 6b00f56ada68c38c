"""Per-tensor checksums: the service lists an xxh3_64 hex digest of each tensor's bytes.

xxhash is not a dependency of the client. When it imports, tensors are verified against the
index; when it does not, only sizes are checked (:func:`checksums_available` says which, and
the download and state-dict functions report it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._exceptions import IntegrityError

__all__ = ["SUPPORTED_ALGORITHMS", "checksums_available", "digest", "TensorVerifier"]

SUPPORTED_ALGORITHMS = ("xxh3_64",)


def _xxh3_64():
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash.xxh3_64


def checksums_available(algorithm: str = "xxh3_64") -> bool:
    return algorithm in SUPPORTED_ALGORITHMS and _xxh3_64() is not None


def digest(data: bytes | bytearray | memoryview, algorithm: str = "xxh3_64") -> str:
    """Hex digest of ``data``; raises ``RuntimeError`` if the algorithm is unavailable."""
    hasher = _xxh3_64() if algorithm in SUPPORTED_ALGORITHMS else None
    if hasher is None:
        raise RuntimeError(f"checksum algorithm {algorithm!r} is not available (install xxhash)")
    return hasher(data).hexdigest()


class TensorVerifier:
    """Checks tensors against the index's checksums, when that is possible and wanted.

    ``active`` is False when verification was not asked for, the index lists no checksums,
    or the algorithm cannot be computed here; ``check`` is then a no-op.
    """

    def __init__(self, checksums: Mapping[str, str], algorithm: str, *, enabled: bool = True) -> None:
        self.checksums = {k: v.lower() for k, v in checksums.items()}
        self.algorithm = algorithm
        self.active = bool(enabled and self.checksums and checksums_available(algorithm))
        self.checked = 0

    def check(self, name: str, data: bytes | bytearray | memoryview, *, where: str = "") -> None:
        if not self.active:
            return
        self.check_digest(name, digest(data, self.algorithm), where=where)

    def hasher(self) -> Any | None:
        """A fresh streaming hasher (``update(bytes)``, ``hexdigest()``); ``None`` when inactive."""
        if not self.active:
            return None
        return _xxh3_64()()

    def check_digest(self, name: str, actual: str, *, where: str = "") -> None:
        """Compare a digest computed elsewhere (e.g. while the bytes arrived) with the index."""
        expected = self.checksums.get(name)
        if expected is None:
            raise IntegrityError(f"tensor {name!r}{where} is not listed in the index's checksums")
        if actual != expected:
            raise IntegrityError(
                f"tensor {name!r}{where}: {self.algorithm} {actual} does not match the index ({expected})"
            )
        self.checked += 1
