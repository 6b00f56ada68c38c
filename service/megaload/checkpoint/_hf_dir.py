"""A Hugging Face model directory as a checkpoint path: what is in it, read lazily.

::

    hf_dir/
        config.json                         the model (-> our GPTModelProvider, :mod:`._hf_config`)
        model.safetensors                   the weights, or
        model.safetensors.index.json        {"weight_map": {tensor: "model-00001-of-00002.safetensors"}}
        model-0000N-of-0000M.safetensors
        tokenizer.json, tokenizer_config.json, ...

:func:`hf_model_dir` tells one from a Megatron checkpoint. :class:`HFWeights` reads every
safetensors header first (bounded, checked against the file's size), so names, shapes and dtypes
are known before any weight is read; :meth:`HFWeights.tensor` then reads one tensor at a time
(``safetensors.safe_open``). Every file is opened through :mod:`._files` (confinement holds).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ._errors import CorruptCheckpointError, summarize
from ._files import TOKENIZER_CONFIG_LIMIT, check_allowed, open_checked, read_json

__all__ = ["HF_CONFIG", "SAFETENSORS_FILE", "SAFETENSORS_INDEX", "hf_model_dir", "read_hf_config", "HFWeights",
           "SAFETENSORS_HEADER_LIMIT"]

HF_CONFIG = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on a header
_INDEX_LIMIT = 64 * 1024 * 1024
_SHARD_NAME = re.compile(r"^[A-Za-z0-9._-]+\.safetensors$")
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def hf_model_dir(path: str | os.PathLike) -> Path | None:
    """``path`` as an absolute Path when it is a Hugging Face model directory (``config.json``
    and ``model.safetensors`` or its index, and no Megatron checkpoint files), else None."""
    from ._layout import COMMON_FILENAME, DCP_METADATA_FILENAME, TRACKER_FILENAME

    p = Path(os.fspath(path)).expanduser().absolute()
    if "\x00" in str(p) or not p.is_dir() or not (p / HF_CONFIG).exists():
        return None
    if not ((p / SAFETENSORS_FILE).exists() or (p / SAFETENSORS_INDEX).exists()):
        return None
    if any((p / name).exists() for name in (DCP_METADATA_FILENAME, COMMON_FILENAME, TRACKER_FILENAME)):
        return None
    return p


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / HF_CONFIG
    config = read_json(path, TOKENIZER_CONFIG_LIMIT, kind="config.json")
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path} should hold a JSON object, found {type(config).__name__}", path=path)
    return config


def _read_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of one safetensors file, every entry checked against the file."""
    with open_checked(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path} is not a safetensors file ({size} bytes, no header)", path=path)
        (n,) = struct.unpack("<Q", head)
        if n > SAFETENSORS_HEADER_LIMIT or n > size - 8:
            raise CorruptCheckpointError(
                f"{path}: the safetensors header claims {n} bytes; the file has {size - 8} after the length "
                f"and the limit is {SAFETENSORS_HEADER_LIMIT}", path=path)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptCheckpointError(f"{path}: the safetensors header is not JSON: {summarize(str(e))}", path=path) from e
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: the safetensors header is not a JSON object", path=path)
    data_bytes = size - 8 - n
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpointError(f"{path}: tensor {summarize(name)} has a malformed header entry "
                                         f"{summarize(entry)}", path=path) from e
        numel = 1
        for d in shape:
            numel *= d
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_bytes or end - begin != numel * dtype.itemsize:
            raise CorruptCheckpointError(
                f"{path}: tensor {summarize(name)} ({entry['dtype']} {list(shape)}) has data_offsets "
                f"[{begin}, {end}] that do not fit its shape or the file ({data_bytes} data bytes; truncated?)",
                path=path)
        out[name] = (shape, dtype)
    return out


class HFWeights(Mapping):
    """The tensors of a Hugging Face directory: name -> (shape, dtype) from the headers, the
    data read one tensor at a time by :meth:`tensor` (or ``self[name]``)."""

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = hf_dir
        self.file_of: dict[str, Path] = {}
        self.specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        index = hf_dir / SAFETENSORS_INDEX
        if (hf_dir / SAFETENSORS_FILE).exists() or (hf_dir / SAFETENSORS_FILE).is_symlink():
            files = {SAFETENSORS_FILE: None}
        else:
            parsed = read_json(index, _INDEX_LIMIT, kind="a safetensors index")
            weight_map = parsed.get("weight_map") if isinstance(parsed, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CorruptCheckpointError(f"{index}: weight_map is missing or empty", path=index)
            files = {}
            for name, shard in weight_map.items():
                if not isinstance(shard, str) or not _SHARD_NAME.match(shard):
                    raise CorruptCheckpointError(f"{index}: weight_map[{summarize(name)}] = {summarize(shard)} is not "
                                                 f"a safetensors file name in this directory", path=index)
                files.setdefault(shard, set()).add(name)
        for shard, names in files.items():
            path = hf_dir / shard
            if not path.exists():
                raise CorruptCheckpointError(f"{path} is missing" + (f" (named by {index})" if names else ""), path=path)
            header = _read_header(path)
            if names is not None:
                absent = sorted(names - header.keys())
                if absent:
                    raise CorruptCheckpointError(f"{index} puts {summarize(absent[0])} in {path}, which does not hold it",
                                                 path=path)
                header = {k: v for k, v in header.items() if k in names}
            for name, spec in header.items():
                if name in self.specs:
                    raise CorruptCheckpointError(f"{path}: tensor {summarize(name)} is also in {self.file_of[name]}",
                                                 path=path)
                self.specs[name] = spec
                self.file_of[name] = path
        self._handles: dict[Path, Any] = {}

    def __getitem__(self, name: str):
        return self.specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def nbytes(self) -> int:
        total = 0
        for shape, dtype in self.specs.values():
            n = dtype.itemsize
            for d in shape:
                n *= d
            total += n
        return total

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from its file now (checked against its header)."""
        from safetensors import SafetensorError, safe_open

        path = self.file_of[name]
        try:
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = safe_open(str(check_allowed(path)), framework="pt")
            value = handle.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CorruptCheckpointError(f"{path}: reading tensor {summarize(name)} failed: {e}", path=path) from e
        if (tuple(value.shape), value.dtype) != self.specs[name]:
            raise CorruptCheckpointError(f"{path}: tensor {summarize(name)} changed while being read", path=path)
        return value

    def close(self) -> None:
        self._handles.clear()
