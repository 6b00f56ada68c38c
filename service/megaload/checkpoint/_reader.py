"""Reading torch_dist checkpoints through megatron-core, with every pickle allowlisted.

megatron-core's stock load strategies unpickle ``common.pt`` and ``.metadata`` with no
restriction and DCP's default planner does ``torch.load(weights_only=False)`` for byte items.
The strategies here keep megatron-core's resharding logic (which shards of which global
tensors land where) and swap only the three places bytes become objects:

1. :class:`SafeCommonLoadStrategy` reads ``common.pt`` via :func:`load_common_state_dict`;
2. :class:`_SafeFileSystemReader` reads ``.metadata`` via :func:`load_dcp_metadata`, and the
   ``.distcp`` records through :mod:`._distcp` (tensor archives taken apart, their pickles
   checked against torch's built-in weights-only globals, storage bytes read in chunks that
   release the GIL);
3. :class:`_SafeLoadPlanner` loads byte items (``_extra_state``) with ``weights_only=True``.

Every file is opened through :mod:`._files` (inside the allowed roots when the caller
confined reading, small files within their size limits). :func:`load_checkpoint` is
megatron-core's ``dist_checkpointing.load`` with these strategies and one difference: it
reads ``metadata.json`` itself (bounded, unknown keys ignored) where megatron-core opens it
unchecked and fails with TypeError on a key it does not know. Call order: check
``metadata.json`` against the strategies -> ``load_common`` -> (optional)
``load_sharded_metadata`` -> ``load`` (reader.read_metadata -> planner plans ->
reader.read_data -> planner.load_bytes / tensor copies).
"""

from __future__ import annotations

import contextvars
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.strategies import torch as _mcore_torch
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType
from torch.futures import Future

from ._distcp import CHUNK_BYTES, FileWindow, open_tensor_record, read_bytes
from ._errors import CorruptCheckpointError, UnsupportedCheckpointError, summarize
from ._files import check_allowed, open_checked
from ._layout import DCP_METADATA_FILENAME, CheckpointFormat, inspect_layout, read_checkpoint_metadata
from ._pickle import load_common_state_dict, load_dcp_metadata, load_torch_file, loads_weights_only
from ._read_progress import ReadProgress

__all__ = [
    "SafeCommonLoadStrategy",
    "SafeTorchDistLoadStrategy",
    "load_checkpoint",
    "TensorMetadata",
    "read_tensor_metadata",
    "estimate_model_bytes",
]


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """``common.pt`` through the allowlist; per-object ``.pt`` files likewise."""

    def load_common(self, checkpoint_dir: str | Path):
        return load_common_state_dict(checkpoint_dir)

    def load_sharded_objects(self, sharded_objects_state_dict, checkpoint_dir):
        def _load(sh_obj: ShardedObject):
            path = Path(checkpoint_dir) / f"{sh_obj.unique_key}.pt"
            if not path.is_file():
                raise CorruptCheckpointError(f"object shard {path} not found", path=path)
            return load_torch_file(path, kind="an object shard")

        from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace

        return dict_list_map_inplace(_load, sharded_objects_state_dict)


class _SafeFileSystemReader(FileSystemReader):
    def __init__(self, path: str | os.PathLike, *, workers: int | None = None) -> None:
        super().__init__(path)
        self._metadata = None
        self.workers = read_workers() if workers is None else workers
        self._seen_pickles: dict[bytes, torch.Tensor] = {}  # see open_tensor_record
        self._checked_files: dict[str, Path] = {}

    def read_metadata(self, *args: Any, **kwargs: Any):
        if self._metadata is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = load_dcp_metadata(self.path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            self._metadata = metadata
        return self._metadata

    def read_data(self, plan, planner) -> Future[None]:
        """Each item of ``plan`` into the planner, as DCP's reader does, without long GIL holds,
        tensor items read by several threads at once.

        Byte items go to ``planner.load_bytes`` (the allowlisted unpickle), in this thread.
        Tensor items: their targets are resolved here, in plan order (the planner keeps state
        between ``resolve_tensor`` and ``commit_tensor`` for FP8 targets, whose items are read
        at once, here); then :func:`_read_tensor_items` reads the rest, each through
        :func:`open_tensor_record` straight into its target when the stored tensor is its plain
        contiguous image (the usual case), through a reused scratch buffer chunk by chunk when
        only dtype or device differ, else into a fresh buffer and then ``copy_``; then they are
        committed here. Items with storage transforms (compression extensions) take DCP's own path.
        """
        for item in plan.items:
            self._where(item)  # every data file checked before any is read
        if any(self.storage_data[item.storage_index].transform_descriptors for item in plan.items):
            return super().read_data(plan, planner)
        queued: list[tuple[Any, torch.Tensor]] = []
        scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                path, info = self._where(item)
                with open_checked(path) as raw:
                    window = FileWindow(raw, info.offset, info.length)
                    planner.load_bytes(item, io.BytesIO(read_bytes(window, what=f"{path}@{info.offset}")))
                continue
            target = planner.resolve_tensor(item).detach()
            if getattr(planner, "_intermediate_read_item_and_target", None) is not None:
                path, info = self._where(item)
                with open_checked(path) as raw:
                    self._read_tensor(raw, path, item, target, scratch)
                planner.commit_tensor(item, target)
            else:
                queued.append((item, target))
        _read_tensor_items(self, queued, workers=self.workers)
        for item, target in queued:
            planner.commit_tensor(item, target)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _data_file(self, relative_path: str) -> Path:
        """The data file ``.metadata`` names: a plain name inside the checkpoint directory,
        inside the allowed roots when reading is confined."""
        name = os.fspath(relative_path)
        if not name or os.path.isabs(name) or ".." in Path(name).parts:
            where = Path(self.path) / DCP_METADATA_FILENAME
            raise CorruptCheckpointError(f"{where} names data file {summarize(name)} outside the checkpoint", path=where)
        path = Path(self.fs.concat_path(self.path, name))
        check_allowed(path)
        return path

    def _where(self, item) -> tuple[Path, Any]:
        """The checked data file of ``item`` (checked once per file) and its storage info."""
        info = self.storage_data[item.storage_index]
        path = self._checked_files.get(info.relative_path)
        if path is None:
            path = self._checked_files[info.relative_path] = self._data_file(info.relative_path)
        return path, info

    def _read_tensor(self, raw, path, item, target: torch.Tensor, scratch: torch.Tensor) -> None:
        info = self.storage_data[item.storage_index]
        what = f"{path}@{info.offset} ({item.storage_index.fqn})"
        record = open_tensor_record(FileWindow(raw, info.offset, info.length), what=what, seen=self._seen_pickles)
        source = record.meta if record.loaded is None else record.loaded
        source = narrow_tensor_by_index(source, item.storage_offsets, item.lengths)
        if target.size() != source.size():
            raise CorruptCheckpointError(
                f"{what}: the stored piece has shape {tuple(source.size())}, its target {tuple(target.size())}",
                path=what,
            )
        if not record.read_contiguous_into(source, target, scratch):
            stored = record.read()
            target.copy_(narrow_tensor_by_index(stored, item.storage_offsets, item.lengths))


def read_workers() -> int:
    """Threads that read tensor records at once: the cores this process may run on, at most 8
    (a page-cache copy runs at a core's memory bandwidth; more threads only contend)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def staging_buffer(targets: list[torch.Tensor]) -> torch.Tensor:
    """The scratch buffer a run of reads stages through where a target is not a plain CPU image
    of its record (a cast, or another device): page-locked when a target lives on a GPU, so each
    chunk's host-to-device copy is a DMA from it rather than through a bounce buffer of the
    driver's; plain memory otherwise (left untouched unless a cast needs it)."""
    scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
    if any(t.device.type == "cuda" for t in targets) and torch.cuda.is_available():
        scratch = scratch.pin_memory()
    return scratch


def _read_tensor_items(reader: _SafeFileSystemReader, queued: list, *, workers: int) -> None:
    """Read ``(item, target)`` pairs with up to ``workers`` threads. Items are sorted by file
    and offset and cut into runs of about equal bytes, one run per thread, each with its own
    file descriptors and scratch buffer (file reads and ``copy_`` release the GIL). The first
    error of any run is raised once every run has stopped."""
    if not queued:
        return
    ordered = sorted(queued, key=lambda pair: (reader._where(pair[0])[0], reader._where(pair[0])[1].offset))
    total = sum(reader._where(item)[1].length for item, _ in ordered)
    workers = max(1, min(workers, len(ordered)))
    runs: list[list] = [[] for _ in range(workers)]
    done_bytes = 0
    for item, target in ordered:
        runs[min(workers - 1, done_bytes * workers // max(1, total))].append((item, target))
        done_bytes += reader._where(item)[1].length

    progress = ReadProgress(total)

    def read_run(run: list) -> None:
        scratch = staging_buffer([target for _, target in run])
        files: dict[str, Any] = {}
        try:
            for item, target in run:
                path, info = reader._where(item)
                raw = files.get(path)
                if raw is None:
                    raw = files[path] = open_checked(path)
                reader._read_tensor(raw, path, item, target, scratch)
                progress.add(info.length)
        finally:
            for raw in files.values():
                raw.close()

    runs = [run for run in runs if run]
    if len(runs) == 1:
        read_run(runs[0])
        return
    with ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="megaload-read") as pool:
        # each run in a copy of the caller's context: the roots reads are confined to go along
        futures = [pool.submit(contextvars.copy_context().run, read_run, run) for run in runs]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]


class _SafeLoadPlanner(_mcore_torch.MCoreLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = loads_weights_only(value, what=f"checkpoint item {read_item.dest_index.fqn}")
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafeTorchDistLoadStrategy(_mcore_torch.TorchDistLoadShardedStrategy):
    """megatron-core's torch_dist load with the allowlisted reader and planner."""

    def load(self, sharded_state_dict, checkpoint_dir: Path):
        from torch.distributed import checkpoint as dcp

        validate_shapes = [
            t for t in nested_values(sharded_state_dict) if isinstance(t, ShardedTensor) and not t.allow_shape_mismatch
        ]
        allow_mismatch = {
            t.key: t for t in nested_values(sharded_state_dict) if isinstance(t, ShardedTensor) and t.allow_shape_mismatch
        }
        original = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = _mcore_torch._replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict
        )
        pyt_state_dict = _mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = _SafeFileSystemReader(checkpoint_dir)
        # Read (and vet) the metadata here: inside load_state_dict a reader error becomes an
        # AssertionError string, losing its type. The reader caches it for DCP's own call.
        reader.read_metadata()
        dcp.load_state_dict(
            pyt_state_dict,
            reader,
            planner=_SafeLoadPlanner(
                shapes_validation_sharded_tensors=validate_shapes,
                allow_shape_mismatch_sharded_tensors=allow_mismatch,
            ),
        )
        self.cached_global_metadata = reader.read_metadata()
        mcore_state_dict = {k: _mcore_torch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        mcore_state_dict = _mcore_torch._replace_sharded_keys_with_state_dict_keys(
            mcore_state_dict, flat_mapping, rename_mapping
        )
        _mcore_torch._restore_dict_types(mcore_state_dict, original)
        return mcore_state_dict

    def load_tensors_metadata(self, checkpoint_dir: Path, metadata=None):
        if metadata is None:
            metadata = load_dcp_metadata(checkpoint_dir)
        return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir: Path):
        metadata = load_dcp_metadata(checkpoint_dir)
        result = {}
        for key, storage in metadata.state_dict_metadata.items():
            if isinstance(storage, BytesStorageMetadata):
                sh_obj = ShardedObject.empty_from_unique_key(key)
                result[sh_obj.unique_key] = sh_obj
        result.update(self.load_tensors_metadata(checkpoint_dir, metadata))
        return result


def load_checkpoint(sharded_state_dict, checkpoint_dir: str | Path, *, strict: str = "assume_ok_unexpected"):
    """``megatron.core.dist_checkpointing.load`` of ``sharded_state_dict`` from
    ``checkpoint_dir`` with :class:`SafeTorchDistLoadStrategy` and
    :class:`SafeCommonLoadStrategy`, ``metadata.json`` read by
    :func:`read_checkpoint_metadata` (see the module docstring). Returns the loaded state
    dict (common state merged in)."""
    from megatron.core.dist_checkpointing.dict_utils import extract_matching_values, merge
    from megatron.core.dist_checkpointing.mapping import apply_factory_merges
    from megatron.core.dist_checkpointing.state_dict_utils import load_preprocess
    from megatron.core.dist_checkpointing.utils import extract_sharded_base, force_all_tensors_to_non_fp8
    from megatron.core.dist_checkpointing.validation import (
        StrictHandling,
        determine_global_metadata,
        parse_strict_flag,
        validate_integrity_and_strict_load,
        validate_sharded_objects_handling,
    )

    checkpoint_dir = str(checkpoint_dir)
    sharded_strategy, common_strategy = SafeTorchDistLoadStrategy(), SafeCommonLoadStrategy()
    saved = read_checkpoint_metadata(checkpoint_dir)
    try:
        sharded_strategy.check_backend_compatibility(saved["sharded_backend"])
        sharded_strategy.check_version_compatibility(saved["sharded_backend_version"])
        common_strategy.check_backend_compatibility(saved["common_backend"])
        common_strategy.check_version_compatibility(saved["common_backend_version"])
    except Exception as e:  # megatron-core raises CheckpointingException
        raise UnsupportedCheckpointError(f"{checkpoint_dir}: {e}", path=checkpoint_dir) from e
    force_all_tensors_to_non_fp8(sharded_state_dict)
    common_state_dict = common_strategy.load_common(checkpoint_dir)
    sharded_state_dict, nonpersistent, factories = load_preprocess(sharded_state_dict)
    merge(common_state_dict, nonpersistent)
    sharded_state_dict, _ = extract_sharded_base(sharded_state_dict)
    strict = parse_strict_flag(strict)
    ckpt_metadata = None
    if StrictHandling.requires_explicit_ckpt_mismatch_check(strict):
        ckpt_metadata = sharded_strategy.load_sharded_metadata(checkpoint_dir)
    local_metadata, global_metadata = determine_global_metadata(sharded_state_dict)
    sharded_state_dict, missing, unexpected = validate_integrity_and_strict_load(
        sharded_state_dict, strict, True, local_metadata, global_metadata, ckpt_metadata
    )
    if not sharded_strategy.can_handle_sharded_objects:
        validate_sharded_objects_handling(sharded_strategy, common_strategy)
        objects, sharded_state_dict = extract_matching_values(sharded_state_dict, lambda v: isinstance(v, ShardedObject))
        merge(common_state_dict, common_strategy.load_sharded_objects(objects, checkpoint_dir))
    merge(common_state_dict, sharded_strategy.load(sharded_state_dict, checkpoint_dir))
    apply_factory_merges(common_state_dict, factories)
    if StrictHandling.requires_returning_mismatch_keys(strict):
        return common_state_dict, missing, unexpected
    return common_state_dict


@dataclass(frozen=True)
class TensorMetadata:
    """A global (unsharded) tensor as recorded in the checkpoint's ``.metadata``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def read_tensor_metadata(checkpoint_path: str | os.PathLike) -> dict[str, TensorMetadata]:
    """Names, global shapes and dtypes of every tensor in the checkpoint (no weights read);
    for a Hugging Face directory, those of its safetensors headers (HF names).

    Names are the on-disk keys (layers stacked: ``decoder.layers.<param>`` with a leading layer
    axis). Byte entries (``_extra_state``, RNG state) are left out; optimizer state is left out.
    """
    layout = inspect_layout(checkpoint_path)
    if layout.format is CheckpointFormat.HUGGING_FACE:  # the safetensors headers, under HF names
        from ._hf_dir import HFWeights

        specs = HFWeights(layout.iteration_dir).specs
        return {name: TensorMetadata(name=name, shape=shape, dtype=dtype) for name, (shape, dtype) in sorted(specs.items())}
    metadata = load_dcp_metadata(layout.iteration_dir)
    out: dict[str, TensorMetadata] = {}
    for key, storage in sorted(metadata.state_dict_metadata.items()):
        if not isinstance(storage, TensorStorageMetadata):
            continue
        if key.startswith("optimizer.") or key.startswith("rng_state"):
            continue
        dtype = storage.properties.dtype
        if not isinstance(dtype, torch.dtype):
            raise CorruptCheckpointError(f"{layout.iteration_dir}/.metadata: {key} has no dtype", path=layout.iteration_dir)
        out[key] = TensorMetadata(name=key, shape=tuple(int(d) for d in storage.size), dtype=dtype)
    if not out:
        raise UnsupportedCheckpointError(
            f"checkpoint {layout.iteration_dir} holds no model tensors", path=layout.iteration_dir
        )
    return out


def estimate_model_bytes(checkpoint_path: str | os.PathLike, dtype: torch.dtype | None = None) -> int:
    """Bytes the model's tensors take once loaded (in ``dtype`` if given, else as stored); for a
    Hugging Face directory, from its safetensors headers, before any weight is read."""
    total = 0
    for meta in read_tensor_metadata(checkpoint_path).values():
        itemsize = dtype.itemsize if dtype is not None else meta.dtype.itemsize
        total += meta.numel * itemsize
    return total
