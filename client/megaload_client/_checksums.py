"""Per-tensor checksums: the service lists an xxh3_64 hex digest of each tensor's bytes.

xxhash is a dependency of the client (imported on first use, so ``import megaload_client``
stays light): with ``verify=True``, the default, every tensor is checked against the index.
An interpreter where it does not import (a broken install, sources on ``sys.path`` without
the package's dependencies) raises :class:`ChecksumUnavailableError` on the first verified
call instead of checking sizes only; ``verify=False`` is the explicit way to skip checksums.

The one fallback to sizes only is an index whose ``checksum_algorithm`` this client does not
know (a newer service): it is warned about, once per algorithm, with :class:`UserWarning` and
the log, and ``DownloadResult.checksums_verified`` is then False.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from ._exceptions import ChecksumUnavailableError, IntegrityError

__all__ = [
    "SUPPORTED_ALGORITHMS", "checksums_available", "digest", "TensorVerifier", "ChecksumUnavailableError"
]

logger = logging.getLogger("megaload_client")

SUPPORTED_ALGORITHMS = ("xxh3_64",)


def _xxh3_64():
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash.xxh3_64


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_unknown_algorithm(algorithm: str) -> None:
    with _warned_lock:
        if algorithm in _warned:
            return
        _warned.add(algorithm)
    message = (
        f"the service's index lists {algorithm!r} checksums, which this megaload-client does not know "
        f"(it knows {', '.join(SUPPORTED_ALGORITHMS)}): tensors are checked by size and header only; "
        "upgrade megaload-client to verify them"
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def _require_xxhash() -> None:
    if _xxh3_64() is None:
        raise ChecksumUnavailableError(
            "megaload-client verifies the index's xxh3_64 checksums with xxhash, one of its dependencies, "
            "which does not import in this interpreter: reinstall megaload-client (pip install xxhash), or pass "
            "verify=False to check sizes and headers only"
        )


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
    or it lists them in an algorithm this client does not know (warned about once); ``check``
    is then a no-op. Raises :class:`ChecksumUnavailableError` when checksums are to be verified
    and xxhash does not import.
    """

    def __init__(self, checksums: Mapping[str, str], algorithm: str, *, enabled: bool = True) -> None:
        self.checksums = {k: v.lower() for k, v in checksums.items()}
        self.algorithm = algorithm
        self.active = bool(enabled and self.checksums)
        if self.active and algorithm not in SUPPORTED_ALGORITHMS:
            _warn_unknown_algorithm(algorithm)
            self.active = False
        if self.active:
            _require_xxhash()
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
