"""Tensors the caller already has, as destinations of ``state_dict(out=...)``.

An RL loop that pushes fresh weights into an inference engine's preallocated tensors wants
the shard bodies read straight into those tensors: no shard buffer, no fresh memory, no copy.
:class:`Destinations` checks ``out`` before anything is fetched (every streamed key has a
tensor, and with ``strict`` every tensor a streamed key; each one on the CPU, strided and
contiguous), then each shard's header against it (dtype and shape, after the server-side
cast) before any tensor byte is requested, and finally hands
:class:`~._safetensors.SafetensorsStream` each tensor's own memory as the place its bytes go.

The index's ``tensors`` gives every streamed tensor's dtype, shape and shard, so the check
needs no further request (:meth:`Destinations.check_index`). An index without it (an older
server) lists keys only; then the headers are fetched first: a ``Range`` request for the
start of each shard, read only as far as the header (:func:`header_probe`). Either way each
tensor is checked once more as its header entry arrives in the stream.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._exceptions import IntegrityError
from ._safetensors import (
    SafetensorsError,
    SafetensorsHeader,
    TensorEntry,
    header_length,
    parse_header,
    torch_dtype,
)
from ._shards import check_shard_header
from .types import ShardInfo, StateDictIndex

if TYPE_CHECKING:
    import torch

__all__ = ["HEADER_PROBE_BYTES", "Destinations", "header_probe", "header_from_prefix"]

# Bytes asked for first when fetching a shard's header; a longer header is asked for again.
HEADER_PROBE_BYTES = 64 * 1024


def header_probe(shard: ShardInfo, length: int = HEADER_PROBE_BYTES) -> int:
    """How many leading bytes of ``shard`` to ask for (never past its end)."""
    return max(1, min(shard.size, length))


def header_from_prefix(prefix: bytes, shard: ShardInfo) -> SafetensorsHeader | int:
    """The header parsed from the shard's first bytes, or how many bytes it needs in all."""
    where = f"shard {shard.index} ({shard.filename})"
    try:
        if len(prefix) < 8:
            raise SafetensorsError(f"only {len(prefix)} bytes arrived, the length prefix needs 8")
        need = 8 + header_length(prefix[:8])
        if need > shard.size:
            raise SafetensorsError(f"header of {need - 8} bytes does not fit in the {shard.size}-byte shard")
        if len(prefix) < need:
            return need
        return parse_header(prefix[8:need])
    except SafetensorsError as exc:
        raise IntegrityError(f"{where} is not valid safetensors: {exc}") from None


class Destinations:
    """``out`` checked against the index now, against each shard's header later."""

    def __init__(self, out: Mapping[str, Any], index: StateDictIndex, *, strict: bool = True) -> None:
        import torch

        if not isinstance(out, Mapping):
            raise TypeError(f"out must be a mapping of name -> torch.Tensor, not {type(out).__name__}")
        self.out = out
        streamed = list(index.weight_map)
        missing = [key for key in streamed if key not in out]
        if missing:
            raise ValueError(
                f"out has no tensor for {len(missing)} streamed key(s), e.g. {missing[:5]}; every "
                "streamed tensor needs a destination (narrow the stream with keys=)"
            )
        if strict:
            extra = sorted(set(out) - set(streamed))
            if extra:
                raise ValueError(
                    f"out has {len(extra)} key(s) the stream does not have, e.g. {extra[:5]}; "
                    "pass strict=False to leave them untouched"
                )
        for key in streamed:
            tensor = out[key]
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"out[{key!r}] is a {type(tensor).__name__}, not a torch.Tensor")
            if tensor.device.type != "cpu":
                raise ValueError(f"out[{key!r}] is on {tensor.device}; only CPU tensors can be filled")
            if tensor.layout != torch.strided or not tensor.is_contiguous():
                raise ValueError(
                    f"out[{key!r}] is not contiguous (strides {tuple(tensor.stride())} for shape "
                    f"{tuple(tensor.shape)}); pass a contiguous tensor"
                )
        self._views: dict[str, memoryview] = {}

    def check_index(self, index: StateDictIndex) -> bool:
        """Every streamed tensor matches its destination's dtype and shape as the index's
        ``tensors`` gives them (ValueError); ``False`` when the index does not describe every
        streamed tensor (an older server), so the shard headers must be fetched instead."""
        if not index.tensors or any(name not in index.tensors for name in index.weight_map):
            return False
        filenames = [shard.filename for shard in index.shards]
        for name, filename in index.weight_map.items():
            info = index.tensors[name]
            if not 0 <= info.shard < len(filenames) or filenames[info.shard] != filename:
                raise IntegrityError(
                    f"index puts tensor {name!r} in shard {info.shard}, but its weight_map says {filename}"
                )
            try:
                self._match(name, info.dtype, tuple(info.shape), ValueError)
            except SafetensorsError as exc:
                raise IntegrityError(f"index gives tensor {name!r} {exc}") from None
        return True

    def check_header(self, header: SafetensorsHeader, shard: ShardInfo, index: StateDictIndex) -> None:
        """Every tensor of the shard matches its destination's dtype and shape (ValueError)."""
        check_shard_header(header, shard, index)
        for entry in header.entries:
            self._match(entry.name, entry.dtype, entry.shape, ValueError)

    def _match(self, name: str, tag: str, shape: tuple[int, ...], error: type[Exception]) -> torch.Tensor:
        tensor = self.out[name]
        dtype = torch_dtype(tag)
        if tensor.dtype != dtype:
            raise error(f"out[{name!r}] is {tensor.dtype}, the stream sends {dtype} (safetensors {tag})")
        if tuple(tensor.shape) != shape:
            raise error(f"out[{name!r}] has shape {tuple(tensor.shape)}, the stream sends {shape}")
        return tensor

    def __call__(self, entry: TensorEntry) -> memoryview:
        """The memory of ``out[entry.name]``, for the stream to read the tensor's bytes into.

        The index or the headers were checked before the transfer; a shard that differs (a
        different dtype or shape) is an :class:`IntegrityError`, before any byte is written.
        """
        tensor = self._match(entry.name, entry.dtype, entry.shape, IntegrityError)
        if entry.nbytes == 0:
            return memoryview(bytearray(0))
        view = self._views.get(entry.name)
        if view is None:
            raw = (ctypes.c_ubyte * entry.nbytes).from_address(tensor.data_ptr())
            view = self._views[entry.name] = memoryview(raw).cast("B")
        return view
