"""``export_hf``: a checkpoint written out as the directory ``save_pretrained`` writes, on CPU.

::

    out_dir/
        config.json  generation_config.json
        tokenizer files bundled in the checkpoint (<iter_dir>/tokenizer/), when there are some
        model-00001-of-0000N.safetensors ...  model.safetensors.index.json

Order of work: the config is mapped first (an unmappable model is refused before any weight
is read), then the model is loaded on CPU, then every file is written into a sibling
``.<name>.partial-<id>`` directory that one rename publishes. Tensors are built one at a time
as each shard is written (q/k/v copies included), so memory beyond the loaded model stays at
one tensor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..checkpoint import (
    CheckpointError,
    inspect_layout,
    load_megatron_model,
    load_model_config,
    load_tokenizer,
    model_state_dict,
)
from ..checkpoint._layout import TOKENIZER_DIRNAME
from ..checkpoint._staging import Staging, check_destination, fsync_dir, remove_stale_saves
from ..streaming import ShardOptions, iter_shard_bytes, plan_shards
from ._view import HFView, hf_view

__all__ = [
    "export_hf",
    "write_hf_directory",
    "tokenizer_files",
    "index_json",
    "config_files",
    "json_file_bytes",
    "DEFAULT_MAX_SHARD_BYTES",
    "TOKENIZER_FILE_NAMES",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
"""transformers 4.x's ``save_pretrained`` default (``"5GB"``)."""

TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""The Hugging Face tokenizer files taken from a checkpoint's ``tokenizer/`` directory."""

_CHUNK = 8 << 20


def tokenizer_files(checkpoint_path: str | os.PathLike) -> list[Path]:
    """The tokenizer files bundled with a checkpoint (regular files named in
    :data:`TOKENIZER_FILE_NAMES` inside ``<iter_dir>/tokenizer/``), sorted by name."""
    layout = inspect_layout(checkpoint_path)
    directory = layout.iteration_dir
    if layout.format.value != "hugging_face":  # a Hugging Face directory holds its files at the top
        directory = directory / TOKENIZER_DIRNAME
    if not directory.is_dir():
        return []
    return sorted(
        directory / name for name in TOKENIZER_FILE_NAMES
        if (directory / name).is_file() and not (directory / name).is_symlink()
    )


def index_json(plan) -> dict[str, Any]:
    """``model.safetensors.index.json`` as transformers writes it, for a shard plan of the HF
    tensors (``megaload.streaming.plan_shards``)."""
    total_parameters = sum(_numel(entry.shape) for entry in plan.tensors.values())
    return {
        "metadata": {"total_parameters": total_parameters, "total_size": plan.total_size},
        "weight_map": plan.weight_map,
    }


def json_file_bytes(data: dict[str, Any]) -> bytes:
    """A JSON file as transformers writes its config files (sorted keys, indent 2, newline)."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def config_files(view: HFView) -> dict[str, bytes]:
    """``config.json`` and ``generation_config.json`` of a view, as the bytes export writes."""
    return {"config.json": json_file_bytes(view.config_json),
            "generation_config.json": json_file_bytes(view.generation_config_json)}


def _check_destination(out: Path, overwrite: bool) -> None:
    check_destination(
        out,
        overwrite,
        verb="export",
        replaceable=lambda path: (path / "config.json").is_file(),
        refusal="the directory holds files and is not a Hugging Face model directory (no config.json); "
        "refusing to replace it",
        taken=f"{out} already holds a model",
    )


def _write_file(path: Path, pieces) -> None:
    with open(path, "wb") as f:
        for piece in pieces:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def write_hf_directory(view: HFView, mcore_tensors, staging: Path, *, tokenizer_sources=(),
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write the view's files into the existing directory ``staging``; returns their names."""
    lazy = view.lazy_tensors(mcore_tensors)
    plan = plan_shards(lazy, ShardOptions(max_shard_bytes=max_shard_bytes))
    written = []
    for name, data in config_files(view).items():
        _write_file(staging / name, [data])
        written.append(name)
    for source in tokenizer_sources:
        shutil.copyfile(source, staging / source.name)
        written.append(source.name)
    for shard in plan.shards:
        _write_file(staging / shard.filename, iter_shard_bytes(plan, shard.index, lazy, chunk_bytes=_CHUNK))
        written.append(shard.filename)
    _write_file(staging / "model.safetensors.index.json", [json_file_bytes(index_json(plan))])
    written.append("model.safetensors.index.json")
    return written


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def export_hf(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    architecture: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the Hugging Face form of a Megatron Bridge or Megatron-LM checkpoint to ``out_dir``.

    CPU only; needs neither a GPU nor Megatron Bridge. ``architecture`` names the target
    (default: the one a Bridge import came from, else chosen from the config; see
    :func:`megaload.hf.hf_view`). Refuses an existing
    non-empty ``out_dir`` (CheckpointExistsError) unless ``overwrite`` is true and it is a
    Hugging Face model directory. Raises UnmappableModelError before reading any weight when
    the model has no Hugging Face form. Returns the absolute path written.
    """
    out = Path(os.fspath(out_dir)).expanduser().absolute()
    _check_destination(out, overwrite)
    config, args = load_model_config(checkpoint_path)
    try:
        tokenizer = load_tokenizer(checkpoint_path)
    except CheckpointError as e:
        logger.warning("no tokenizer for %s (%s): config.json gets no bos/eos/pad ids", checkpoint_path, e)
        tokenizer = None
    view = hf_view(config, megatron_args=args, tokenizer=tokenizer, architecture=architecture)
    model = load_megatron_model(checkpoint_path, use_cpu_init=True)
    state = model_state_dict(model)
    view.tensor_plan(state)  # refuse a state dict the config contradicts before creating anything
    # staged beside the destination and published as a save is (owner file, cleaned if we die)
    remove_stale_saves(out.parent, name=out.name)
    stage = Staging.create(out)
    try:
        write_hf_directory(view, state, stage.path, tokenizer_sources=tokenizer_files(checkpoint_path),
                           max_shard_bytes=max_shard_bytes)
        fsync_dir(stage.path)
    except BaseException:
        stage.discard()
        raise
    stage.publish()
    logger.info("exported %s as %s to %s", checkpoint_path, view.architecture, out)
    return out
