"""Loading straight into the model's own memory, once.

megatron-core's ``dist_checkpointing.load`` reads each tensor into the ``data`` of its
``ShardedTensor``, which is the model's parameter (or a view of it). Two things around that
read cost as much as the read itself on a large model, and neither changes a loaded value:

1. **Zeroing.** Tensors marked ``allow_shape_mismatch`` (the word embeddings and output layer,
   whose padded vocabulary may differ from the checkpoint's) are zeroed before the read in case
   the checkpoint covers only part of them. :func:`prepare_sharded_state_dict` clears the mark
   where the checkpoint's global shape is exactly the model's, so nothing is left to zero.
2. **Merging halves.** A gated MLP's ``linear_fc1`` is stored as two halves (gate, up) through
   a ``ShardedTensorFactory`` whose halves are views of the parameter; after the read the factory
   ``torch.cat``-s them into a new tensor, which ``load_state_dict`` then copies back. Where the
   halves are exactly the two consecutive halves of the parameter, the factory's merge here
   returns the parameter itself (already holding the loaded values), so neither copy is made.

Nothing here is patched process-wide: only the sharded state dict built for this load changes.
(Huge pages for the parameters are advised separately, in ``_huge_pages``, where they pay.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["prepare_sharded_state_dict"]

def prepare_sharded_state_dict(sharded: Mapping[str, Any], checkpoint_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Points 1 and 2 of the module docstring, on the sharded state dict of one load.
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
