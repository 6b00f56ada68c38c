"""Transparent huge pages for the memory a load is about to fill.

A cold load writes every byte of a model into memory the process has never touched; with 4 KiB
pages the kernel takes one fault (and clears one page) per 4 KiB, which costs about as much as
copying the bytes from the page cache. Advising the not-yet-touched parameter storage with
``madvise(MADV_HUGEPAGE)`` just before the read makes those faults one per 2 MiB. Only memory of
the tensors being loaded is advised (nothing process-wide changes), values are unaffected, and
on a kernel without THP the advice is a no-op.

The one place huge pages cost more: a VM whose balloon device reports free pages to its host
(virtio-balloon ``VIRTIO_BALLOON_F_REPORTING``). The guest hands freed 2 MiB blocks back to the
host, so the first touch of a huge page there is a host fault per 4 KiB of it, slower than
ordinary pages (measured in docs/benchmarks.md, "Cold loads"). ``MEGALOAD_HUGE_PAGES`` decides:
``auto`` (default: on unless THP is off or such a balloon is present), ``on`` or ``off``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from ._errors import IncompatibleConfigError

__all__ = ["HUGE_PAGES_ENV", "advise_huge_pages", "huge_pages_enabled"]

HUGE_PAGES_ENV = "MEGALOAD_HUGE_PAGES"
HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14
_VIRTIO_BALLOON_F_REPORTING = 5
_SYS = Path("/sys")


def huge_pages_enabled() -> bool:
    """Whether loads advise huge pages, from ``MEGALOAD_HUGE_PAGES`` (``auto``, ``on``, ``off``)."""
    value = os.environ.get(HUGE_PAGES_ENV, "auto").strip().lower()
    if value in ("on", "1", "true"):
        return sys.platform == "linux"
    if value in ("off", "0", "false"):
        return False
    if value != "auto":
        raise IncompatibleConfigError(
            f"{HUGE_PAGES_ENV}={value[:32]!r} is not one of auto, on, off", field=HUGE_PAGES_ENV
        )
    return _auto()


@functools.cache
def _auto() -> bool:
    if sys.platform != "linux":
        return False
    try:
        mode = (_SYS / "kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    if "[never]" in mode:
        return False
    return not _balloon_reports_free_pages()


def _balloon_reports_free_pages() -> bool:
    """A virtio-balloon device that offers free page reporting (feature bit 5 of its
    ``features`` string, one character per bit)."""
    driver = _SYS / "bus/virtio/drivers/virtio_balloon"
    try:
        devices = [p for p in driver.iterdir() if p.name.startswith("virtio")]
    except OSError:
        return False
    for device in devices:
        try:
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        if len(features) > _VIRTIO_BALLOON_F_REPORTING and features[_VIRTIO_BALLOON_F_REPORTING] == "1":
            return True
    return False


@functools.cache
def _madvise():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Advise huge pages for the whole 2 MiB pages inside each CPU tensor's storage (each storage
    once); returns the bytes advised. Advice the kernel refuses is skipped: it only costs speed."""
    madvise = _madvise()
    seen: set[int] = set()
    advised = 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.is_sparse:
            continue
        storage = tensor.untyped_storage()
        start = storage.data_ptr()
        if start == 0 or start in seen or storage.nbytes() < HUGE_PAGE_BYTES:
            continue
        seen.add(start)
        first = (start + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1)
        end = (start + storage.nbytes()) & ~(HUGE_PAGE_BYTES - 1)
        if end > first and madvise(first, end - first, _MADV_HUGEPAGE) == 0:
            advised += end - first
    return advised
