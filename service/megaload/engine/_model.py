"""What the engine keeps: resident models (:class:`LoadedModel`), a small tokenizer cache,
and the helpers that describe a loaded model's tensors."""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadedModel", "Tokenizers"]


@dataclass
class LoadedModel:
    """A model resident in the engine. ``state_dict`` holds zero-copy views of its tensors."""

    model_id: str
    state_dict: dict[str, Any]
    parameter_count: int
    size_bytes: int
    dtype: str
    model_type: str | None
    config_type: str
    load_seconds: float
    model: list[Any] = field(repr=False, default_factory=list)
    # Multi-rank models: this rank's own tensors, rank 0's directory of every rank's parts
    # (``state_dict`` is then a GatheredTensors) and, on other ranks, what this one sends.
    local_state_dict: dict[str, Any] = field(repr=False, default_factory=dict)
    directory: Any = field(repr=False, default=None)
    sends: dict[str, str] = field(repr=False, default_factory=dict)


class Tokenizers:
    """The last ``size`` tokenizers loaded, keyed by path and the directory's mtime (a
    rewritten checkpoint gets a fresh one)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._cache: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def get(self, path: str) -> Any:
        from megaload.checkpoint import load_tokenizer

        key = (path, _mtime_ns(Path(path)))
        tok = self._cache.get(key)
        if tok is None:
            tok = load_tokenizer(path)
            self._cache[key] = tok
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return tok

    def clear(self) -> None:
        self._cache.clear()


def with_params_dtype(config: Any, dtype: str) -> Any:
    """A copy of ``config`` saying its weights are ``dtype`` (a load that cast them)."""
    import copy

    import torch

    target = getattr(torch, dtype)
    out = copy.copy(config)
    out.params_dtype = target
    out.bf16 = target is torch.bfloat16
    out.fp16 = target is torch.float16
    return out


def model_type_of(config: Any) -> str | None:
    name = type(config).__name__.lower() if config is not None else ""
    if "mamba" in name:
        return "mamba"
    if "gpt" in name or "transformerconfig" in name:
        return "gpt"
    return None


def unique_nbytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views share theirs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def dtype_of(tensors: Any) -> str:
    found = {str(t.dtype).removeprefix("torch.") for t in tensors if t.dtype.is_floating_point}
    if len(found) == 1:
        return found.pop()
    return "mixed" if found else "none"


def dir_bytes(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        return total
    return total


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
