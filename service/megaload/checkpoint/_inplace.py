"""Loading straight into the model's own memory, once.

megatron-core's ``dist_checkpointing.load`` reads each tensor into the ``data`` of its
``ShardedTensor``, which is the model's parameter (or a view of it). Three things around that
read cost as much as the read itself on a large model, and none changes a loaded value:

1. **Fresh pages.** A parameter megatron-core has just built (``torch.empty``, never touched)
   is faulted in by the read, 4 KiB at a time. :func:`rehome_on_huge_pages` gives each large
   CPU parameter and buffer memory of its own that asks for transparent huge pages
   (``MADV_HUGEPAGE``; one fault maps 2 MiB), before the read. Measured on the 2-core bench VM
   for 1.1 GiB read from the page cache: into ``torch.empty`` 1.39 s, into huge-page mappings
   0.67 s (machine loaded). But the first load in a fresh process took 1.3 to 2.4 s for 0.55 GiB
   with huge pages against 0.6 s without (the VM's host backs fresh huge pages slowly), so the
   loader does not apply it; it stays here, tested, for the service to use where it pays
   (docs/benchmarks.md, "Cold loads").
2. **Zeroing.** Tensors marked ``allow_shape_mismatch`` (the word embeddings and output layer,
   whose padded vocabulary may differ from the checkpoint's) are zeroed before the read in case
   the checkpoint covers only part of them. :func:`prepare_sharded_state_dict` clears the mark
   where the checkpoint's global shape is exactly the model's, so nothing is left to zero.
3. **Merging halves.** A gated MLP's ``linear_fc1`` is stored as two halves (gate, up) through
   a ``ShardedTensorFactory`` whose halves are views of the parameter; after the read the factory
   ``torch.cat``-s them into a new tensor, which ``load_state_dict`` then copies back. Where the
   halves are exactly the two consecutive halves of the parameter, the factory's merge here
   returns the parameter itself (already holding the loaded values), so neither copy is made.

Nothing here is patched process-wide: only the sharded state dict built for this load and the
loaded model's own tensors change.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["HUGE_PAGE_MIN_BYTES", "rehome_on_huge_pages", "prepare_sharded_state_dict"]

# Below this a mapping's system calls cost more than the faults they save (and every mapping
# is one of the process's limited memory areas, ``vm.max_map_count``).
HUGE_PAGE_MIN_BYTES = 2 << 20

_LINUX = sys.platform.startswith("linux")


def _huge_page_tensor(like: torch.Tensor) -> torch.Tensor | None:
    nbytes = like.numel() * like.element_size()
    try:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:  # no address space for a mapping: keep the allocator's memory
        return None
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            mapping.madvise(advice)
        except OSError:  # a kernel without transparent huge pages: still lazily faulted
            pass
    # the tensor keeps the mapping alive (a buffer export); it is unmapped with the last view
    return torch.frombuffer(mapping, dtype=like.dtype, count=like.numel()).view(like.shape)


def rehome_on_huge_pages(modules: Iterable[torch.nn.Module], *, min_bytes: int = HUGE_PAGE_MIN_BYTES) -> int:
    """Move every contiguous CPU parameter and buffer of at least ``min_bytes`` into fresh
    memory of its own that asks for transparent huge pages; the values are NOT copied (call this
    only on tensors about to be overwritten by a load). A parameter keeps its identity and
    attributes (``param.data`` is replaced); shared tensors move once. Returns the bytes moved
    (0 where anonymous mappings are not available)."""
    if not _LINUX:
        return 0
    moved: dict[tuple[int, int], torch.Tensor] = {}
    for module in modules:
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                fresh = None if param is None else _replacement(param.data, moved, min_bytes)
                if fresh is not None:
                    param.data = fresh
            for name, buffer in list(sub._buffers.items()):
                fresh = None if buffer is None else _replacement(buffer, moved, min_bytes)
                if fresh is not None:
                    sub._buffers[name] = fresh
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in moved.values()}.values())


def _replacement(tensor: torch.Tensor, moved: dict[tuple[int, int], torch.Tensor], min_bytes: int) -> torch.Tensor | None:
    if tensor.device.type != "cpu":
        return None
    storage = tensor.untyped_storage()
    key = (storage.data_ptr(), storage.nbytes())  # a tensor shared by two modules moves once
    if key in moved:
        return moved[key]
    if (
        not tensor.is_contiguous()
        or tensor.storage_offset() != 0
        or storage.nbytes() != tensor.numel() * tensor.element_size()
        or tensor.numel() * tensor.element_size() < min_bytes
    ):
        return None
    fresh = _huge_page_tensor(tensor)
    if fresh is not None:
        moved[key] = fresh
        home = fresh.untyped_storage()
        moved[(home.data_ptr(), home.nbytes())] = fresh  # met again through another module: stays
    return fresh


def prepare_sharded_state_dict(sharded: Mapping[str, Any], checkpoint_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Points 2 and 3 of the module docstring, on the sharded state dict of one load.
    ``checkpoint_shapes``: global shape of every tensor key in the checkpoint's ``.metadata``."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    for value in nested_values(sharded):
        if isinstance(value, ShardedTensor):
            if value.allow_shape_mismatch and checkpoint_shapes.get(value.key) == tuple(value.global_shape):
                value.allow_shape_mismatch = False
        elif isinstance(value, ShardedTensorFactory) and _is_glu_halves(value):
            value.merge_fn = _merge_in_place(value.data, value.merge_fn)


def _is_glu_halves(factory: Any) -> bool:
    return getattr(factory.merge_fn, "__qualname__", "").startswith("apply_swiglu_sharded_factory.")


def _merge_in_place(whole: torch.Tensor, merge: Any):
    """A factory merge that returns ``whole`` when the loaded parts are its two consecutive
    halves along dim 0 (views read in place), else falls back to the factory's own merge."""

    def merge_fn(parts):
        if _tiles(whole, parts):
            return whole
        return merge(parts)

    return merge_fn


def _tiles(whole: torch.Tensor, parts: Any) -> bool:
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not whole.is_contiguous():
        return False
    first, second = parts
    if not all(isinstance(p, torch.Tensor) and p.is_contiguous() and p.dtype == whole.dtype for p in parts):
        return False
    if first.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
        return False
    return (
        first.data_ptr() == whole.data_ptr()
        and second.data_ptr() == whole.data_ptr() + first.numel() * first.element_size()
        and first.shape[1:] == second.shape[1:] == whole.shape[1:]
        and first.shape[0] + second.shape[0] == whole.shape[0]
    )
