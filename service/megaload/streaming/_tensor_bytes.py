"""The wire bytes of one tensor, read in bounded pieces.

Three paths, chosen per tensor:

* zero-copy: a contiguous CPU tensor already in the wire dtype. Its memory is exposed as one
  ``uint8`` numpy array (``tensor.view(torch.uint8)``, which works for bf16 and fp8 too) and
  pieces are ``memoryview`` slices of it. Nothing is copied; a piece keeps the tensor alive.
* bounded copy: a dtype cast, a non-contiguous tensor, or a conjugate/negative view. The
  tensor is walked as runs of at most ``chunk_bytes`` worth of elements in row-major order;
  each run is made contiguous (a copy of that run only) and cast on its own, so the memory
  used is a few runs, never the tensor.
* device: a CUDA tensor is cut into runs on the GPU (cast there too) and each run is copied
  into one pinned host buffer of ``chunk_bytes`` per stream, then out into a fresh ``bytes``
  piece. UNTESTED here: written for GPUs, exercised only where ``torch.cuda.is_available()``.
  Other non-CPU devices copy each run with ``.cpu()``.

Every piece is a read-only 1-D ``memoryview`` of unsigned bytes that stays valid after the
next piece is produced (buffers are never reused for a piece already handed out), so a
consumer may keep or queue pieces, as asyncio transports do. A zero-copy piece holds a
reference to the tensor's storage, so the memory stays valid even if the model is evicted
while a piece still waits in a transport buffer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

__all__ = ["tensor_pieces", "DeviceStaging"]

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("megaload.streaming writes little-endian safetensors and needs a little-endian host")


class DeviceStaging:
    """One pinned host buffer per stream, allocated on first use, for device-to-host copies."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._buffer: torch.Tensor | None = None

    def to_host(self, run: torch.Tensor) -> memoryview:
        """Bytes of the contiguous 1-D device tensor ``run`` (at most ``nbytes``) as a fresh piece."""
        raw = run.view(torch.uint8)
        if run.device.type != "cuda":
            return _host_view(raw.cpu())
        if self._buffer is None:
            # UNTESTED without a GPU.
            self._buffer = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=True)
        staged = self._buffer[: raw.numel()]
        staged.copy_(raw)  # blocking copy: done when copy_ returns
        return memoryview(staged.numpy().tobytes())


def tensor_pieces(
    tensor: torch.Tensor,
    wire_dtype: torch.dtype,
    start: int,
    end: int,
    chunk_bytes: int,
    staging: DeviceStaging | None = None,
) -> Iterator[memoryview]:
    """Bytes ``[start, end)`` of ``tensor`` as it goes on the wire (cast to ``wire_dtype``),
    in pieces of at most ``chunk_bytes``. ``tensor`` is detached; ``0 <= start <= end <=
    numel * wire_dtype.itemsize``; ``chunk_bytes`` is at least the widest element (8)."""
    if end <= start:
        return
    on_cpu = tensor.device.type == "cpu"
    if on_cpu and tensor.dtype == wire_dtype and _plain_contiguous(tensor):
        whole = _host_view(_flat(tensor).view(torch.uint8))
        for s in range(start, end, chunk_bytes):
            yield whole[s : min(s + chunk_bytes, end)]
        return
    if not on_cpu and staging is None:
        staging = DeviceStaging(chunk_bytes)
    out_size = wire_dtype.itemsize
    budget = max(1, chunk_bytes // max(out_size, tensor.element_size()))
    first, last = start // out_size, -(-end // out_size)
    position = first * out_size  # wire offset of the next run's first byte
    for run in _runs(tensor, first, last, budget):
        count = run.numel()
        if run.is_conj():
            run = run.resolve_conj()
        if run.is_neg():
            run = run.resolve_neg()
        if run.dtype != wire_dtype:
            run = run.to(wire_dtype)
        piece = _host_view(run.view(torch.uint8)) if on_cpu else staging.to_host(run)  # type: ignore[union-attr]
        lo, hi = max(start - position, 0), min(end - position, count * out_size)
        yield piece if (lo == 0 and hi == len(piece)) else piece[lo:hi]
        position += count * out_size


def _plain_contiguous(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg()


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view with stride 1 of a contiguous tensor. ``is_contiguous`` ignores the stride
    of size-1 dimensions, so a one-element tensor may carry any stride; it is reset here,
    which is valid because a single element's stride is never used."""
    flat = tensor.reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        flat = flat.as_strided((flat.numel(),), (1,))
    return flat


def _host_view(raw: torch.Tensor) -> memoryview:
    """A zero-copy, read-only memoryview of a 1-D contiguous CPU uint8 tensor (read-only:
    for the zero-copy path it aliases the model's weights)."""
    return memoryview(raw.numpy()).toreadonly()


def _runs(tensor: torch.Tensor, lo: int, hi: int, budget: int) -> Iterator[torch.Tensor]:
    """Contiguous 1-D tensors of at most ``budget`` elements that, concatenated, are the
    row-major elements ``[lo, hi)`` of ``tensor``. Views where ``tensor`` is contiguous;
    otherwise copies of at most ``budget`` elements (rows are taken a block at a time, or,
    when one row is over budget, the rows are walked recursively)."""
    if hi <= lo:
        return
    if tensor.is_contiguous():
        flat = _flat(tensor)
        for s in range(lo, hi, budget):
            yield flat[s : min(s + budget, hi)]
        return
    rows = tensor.shape[0]
    row = tensor.numel() // rows  # > 0: a tensor with no elements is contiguous
    position = lo
    if row <= budget:
        per_block = budget // row
        while position < hi:
            first = position // row
            stop = min(first + per_block, -(-hi // row), rows)
            block = _flat(tensor[first:stop].contiguous())
            base = first * row
            yield block[position - base : min(hi - base, block.numel())]
            position = base + min(hi - base, block.numel())
    else:
        while position < hi:
            index = position // row
            base = index * row
            stop = min(hi - base, row)
            yield from _runs(tensor[index], position - base, stop, budget)
            position = base + stop
