"""Writing torch_dist checkpoints on any host, CUDA or not.

megatron-core's stock ``torch_dist`` save strategy writes through an asynchronous writer that
calls ``torch.cuda.synchronize``/``current_device`` and forks writer processes. This strategy
keeps megatron-core's translation of ShardedTensors into torch.distributed.checkpoint items
(so the files are the ones megatron-core writes and reads) and hands them to
``torch.distributed.checkpoint.save`` with the synchronous, thread-based ``FileSystemWriter``,
which needs no CUDA and no extra processes. Nothing global is patched.

Call order inside ``megatron.core.dist_checkpointing.save(sd, dir, SyncTorchDistSaveStrategy())``:
common state -> ``common.pt`` (rank 0); ``save()`` here -> planner plans (all ranks, gathered
over the default group) -> writer threads write ``__<rank>_<n>.distcp`` -> coordinator writes
``.metadata``; then megatron-core writes ``metadata.json``.
"""

from __future__ import annotations

from pathlib import Path

from megatron.core.dist_checkpointing.strategies import torch as _mcore_torch
from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy

__all__ = ["SyncTorchDistSaveStrategy"]


class SyncTorchDistSaveStrategy(SaveShardedStrategy):
    """Synchronous torch_dist writer (backend ``torch_dist``, version 1)."""

    # One writer thread: DCP's FileSystemWriter runs extra threads whose exceptions it does not
    # propagate (a failed file would be missing from a "successful" save); with one, every write
    # happens on the calling thread and an I/O error fails the save.
    def __init__(self, thread_count: int = 1) -> None:
        super().__init__("torch_dist", 1)
        self.thread_count = thread_count

    @property
    def can_handle_sharded_objects(self) -> bool:
        return True

    def save(self, sharded_state_dict, checkpoint_dir: Path) -> None:
        from torch.distributed import checkpoint as dcp

        sharded_state_dict, _flat, _rename = _mcore_torch._replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, True
        )
        pyt_state_dict = _mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, False)
        writer = dcp.FileSystemWriter(
            str(checkpoint_dir), single_file_per_rank=True, sync_files=True, thread_count=self.thread_count
        )
        dcp.save(
            pyt_state_dict,
            storage_writer=writer,
            planner=_mcore_torch.MCoreSavePlanner(flatten_state_dict=False),
        )
