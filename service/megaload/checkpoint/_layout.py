"""Where things are inside a checkpoint directory.

A *save directory* holds ``latest_checkpointed_iteration.txt`` and one ``iter_NNNNNNN`` (or
``release``) directory per saved iteration; an *iteration directory* holds the distributed
checkpoint itself::

    save_dir/
        latest_checkpointed_iteration.txt   "100" or "release"
        iter_0000100/
            .metadata                        torch.distributed.checkpoint metadata (pickle)
            __0_0.distcp ...                 tensor data
            common.pt                        non-sharded state (pickle; Megatron-LM puts ``args`` here)
            metadata.json                    {"sharded_backend": "torch_dist", ...}
            run_config.yaml                  Megatron Bridge only: the training config
            tokenizer/                       Megatron Bridge only: bundled tokenizer files
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsupportedCheckpointError,
    summarize,
)
from ._files import METADATA_JSON_LIMIT, TRACKER_LIMIT, read_json, read_limited

__all__ = [
    "CheckpointFormat",
    "CheckpointLayout",
    "resolve_iteration_dir",
    "inspect_layout",
    "read_checkpoint_metadata",
    "iteration_dir_name",
    "TRACKER_FILENAME",
    "RUN_CONFIG_FILENAME",
    "COMMON_FILENAME",
    "METADATA_FILENAME",
    "DCP_METADATA_FILENAME",
    "TOKENIZER_DIRNAME",
]

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
RUN_CONFIG_FILENAME = "run_config.yaml"
COMMON_FILENAME = "common.pt"
METADATA_FILENAME = "metadata.json"
DCP_METADATA_FILENAME = ".metadata"
TOKENIZER_DIRNAME = "tokenizer"

_ITER_RE = re.compile(r"^iter_(\d{7,})$")
# The fields of megatron-core's CheckpointingConfig (metadata.json) and their defaults; other
# keys (newer writers add some) are ignored.
_METADATA_FIELDS: dict[str, Any] = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


class CheckpointFormat(str, enum.Enum):
    """Who wrote the checkpoint, as far as loading is concerned."""

    BRIDGE = "megatron_bridge"
    MEGATRON_LM = "megatron_lm"
    HUGGING_FACE = "hugging_face"  # a model directory: config.json + safetensors (see _hf_dir)


@dataclass(frozen=True)
class CheckpointLayout:
    """What :func:`inspect_layout` found in an iteration directory."""

    iteration_dir: Path  # the model directory itself for a Hugging Face directory
    format: CheckpointFormat
    iteration: int | None  # None for ``release`` (and Hugging Face directories)
    sharded_backend: str  # "safetensors" for a Hugging Face directory


def iteration_dir_name(iteration: int | str) -> str:
    """``iter_0000100`` for 100, ``release`` for ``"release"``."""
    if iteration == "release":
        return "release"
    return f"iter_{int(iteration):07d}"


def _read_tracker(save_dir: Path) -> str:
    tracker = save_dir / TRACKER_FILENAME
    raw = read_limited(tracker, TRACKER_LIMIT, kind="an iteration tracker")
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        raise CorruptCheckpointError(
            f"{tracker} should hold an iteration number or 'release', got {text[:40]!r}", path=tracker
        )
    if text == "release":
        return "release"
    if not (text.isascii() and text.isdigit()):
        raise CorruptCheckpointError(
            f"{tracker} should hold an iteration number or 'release', got {text[:40]!r}", path=tracker
        )
    return iteration_dir_name(int(text))


def resolve_iteration_dir(checkpoint_path: str | os.PathLike) -> Path:
    """Return the iteration directory that ``checkpoint_path`` designates.

    ``checkpoint_path`` is either an iteration directory (it holds ``.metadata`` or
    ``common.pt``) or a save directory whose ``latest_checkpointed_iteration.txt`` names one.
    The result is absolute but symlinks are not resolved (callers that police roots resolve).
    """
    path = Path(os.fspath(checkpoint_path)).expanduser().absolute()
    if "\x00" in str(path):
        raise NotACheckpointError("checkpoint path contains a NUL byte", path=str(path).replace("\x00", "\\0"))
    if not path.exists():
        raise CheckpointNotFoundError(f"no such checkpoint: {path}", path=path)
    if not path.is_dir():
        raise NotACheckpointError(f"not a checkpoint directory (a file): {path}", path=path)
    if (path / DCP_METADATA_FILENAME).exists() or (path / COMMON_FILENAME).exists():
        return path
    if (path / TRACKER_FILENAME).exists():
        name = _read_tracker(path)
        iter_dir = path / name
        if not iter_dir.is_dir():
            raise CorruptCheckpointError(
                f"{path / TRACKER_FILENAME} names {name}, which does not exist in {path}", path=iter_dir
            )
        return iter_dir
    hf_note = (
        "; it has a config.json, but a Hugging Face model directory also needs model.safetensors or "
        "model.safetensors.index.json (other weight formats are not read)"
        if (path / "config.json").exists() else ""
    )
    raise NotACheckpointError(
        f"{path} is neither an iteration directory (no {DCP_METADATA_FILENAME} or {COMMON_FILENAME}) "
        f"nor a save directory (no {TRACKER_FILENAME}){hf_note}",
        path=path,
    )


def read_checkpoint_metadata(iter_dir: str | os.PathLike) -> dict[str, Any]:
    """The fields of ``metadata.json`` megatron-core defines (``sharded_backend`` and its
    version, ``common_backend`` and its version), defaults filled in, unknown keys ignored.
    Raises CorruptCheckpointError when the file is missing, over its size limit, not JSON,
    or holds values of the wrong type."""
    path = Path(iter_dir) / METADATA_FILENAME
    meta = read_json(path, METADATA_JSON_LIMIT, kind="metadata.json")
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{path} should hold a JSON object, found {type(meta).__name__}", path=path)
    out = {}
    for key, default in _METADATA_FIELDS.items():
        value = meta.get(key, default)
        expected = int if key.endswith("_version") else str
        if not isinstance(value, expected) or isinstance(value, bool):
            raise CorruptCheckpointError(
                f"{path}: {key} should be {'an integer' if expected is int else 'a string'}, "
                f"got {type(value).__name__}",
                path=path,
            )
        out[key] = value
    return out


def inspect_layout(checkpoint_path: str | os.PathLike) -> CheckpointLayout:
    """Resolve the iteration directory and check the files a torch_dist load needs. A Hugging
    Face model directory is its own "iteration directory" (format HUGGING_FACE)."""
    from ._hf_dir import hf_model_dir

    hf_dir = hf_model_dir(checkpoint_path)
    if hf_dir is not None:
        return CheckpointLayout(iteration_dir=hf_dir, format=CheckpointFormat.HUGGING_FACE, iteration=None,
                                sharded_backend="safetensors")
    iter_dir = resolve_iteration_dir(checkpoint_path)
    for required in (DCP_METADATA_FILENAME, COMMON_FILENAME):
        if not (iter_dir / required).is_file():
            raise CorruptCheckpointError(
                f"checkpoint {iter_dir} is missing {required}", path=iter_dir / required
            )
    backend = "torch_dist"
    meta_path = iter_dir / METADATA_FILENAME
    if meta_path.is_file() or meta_path.is_symlink():
        backend = read_checkpoint_metadata(iter_dir)["sharded_backend"]
    if backend != "torch_dist":
        raise UnsupportedCheckpointError(
            f"checkpoint {iter_dir} uses sharded backend {summarize(backend)}; only 'torch_dist' is supported",
            path=iter_dir,
        )
    fmt = CheckpointFormat.BRIDGE if (iter_dir / RUN_CONFIG_FILENAME).is_file() else CheckpointFormat.MEGATRON_LM
    m = _ITER_RE.match(iter_dir.name)
    iteration = int(m.group(1)) if m else None
    return CheckpointLayout(iteration_dir=iter_dir, format=fmt, iteration=iteration, sharded_backend=backend)
