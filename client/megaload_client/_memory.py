"""Fresh memory for bytes about to be received.

Every tensor ``state_dict()`` and ``iter_tensors()`` return lives in memory the client had to
ask the kernel for, and on a VM the page faults of that memory can cost as much as receiving
the bytes. :func:`fresh_buffer` hands out large buffers as anonymous mappings that ask for
transparent huge pages (``MADV_HUGEPAGE``): one fault maps 2 MiB instead of 4 KiB, and the
pages are faulted lazily by the ``readinto`` that fills them, so no separate pass touches
them first. Measured on the bench VM for 1.1 GiB (best of 3): ``bytearray`` 0.67 s (user
space zero-fill, 4 KiB faults), ``MAP_POPULATE`` 0.38 s, huge pages 0.21 s. Where the
kernel grants no huge pages the mapping is still faulted lazily, 4 KiB at a time, which
measured within 15% of ``MAP_POPULATE`` either way (docs/benchmarks.md). Where memory is
fragmented and ``/sys/kernel/mm/transparent_hugepage/defrag`` is ``madvise`` (a common
default), the kernel may compact memory before handing out a huge page; the bench records
such stalls (``compact_stall``) and saw none.

Small buffers, and platforms without anonymous mappings, get a ``bytearray``.
"""

from __future__ import annotations

import mmap
import sys

__all__ = ["MAPPED_MIN_BYTES", "fresh_buffer"]

# Below this a mapping's system calls cost more than the faults they save (and every mapping
# is one of the process's limited memory areas, see ``vm.max_map_count``).
MAPPED_MIN_BYTES = 2 << 20

_LINUX = sys.platform.startswith("linux")


def fresh_buffer(size: int) -> bytearray | mmap.mmap:
    """Writable, zeroed memory for exactly ``size`` bytes that will be overwritten.

    The result supports the buffer protocol (``memoryview``, ``torch.frombuffer``); a mapping
    is unmapped when the last reference to it, or to a view of it, goes away.
    """
    if size < MAPPED_MIN_BYTES or not _LINUX:
        return bytearray(size)
    try:
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:  # no address space left for a mapping: let the allocator try
        return bytearray(size)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            mapping.madvise(advice)
        except OSError:  # a kernel built without transparent huge pages
            pass
    return mapping
