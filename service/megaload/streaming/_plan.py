"""The shard planner: which tensors go into which safetensors file, at which offsets.

A plan is made from names, shapes and dtypes alone; no tensor data is read, so tensor-like
metadata (:class:`TensorSpec`, meta tensors) plans as well as real tensors. Everything the
HTTP layer must know before sending a byte (file sizes, headers, ETags, the index) follows
from the plan. Reading the bytes is the writer's job (:mod:`._writer`).

Order. Tensors keep the order of the mapping given (a model's ``state_dict()`` order is
module registration order, hence deterministic); shards are filled greedily in that order.
Inside one shard file, the data section puts tensors with wider elements first (8-byte, then
4, 2, 1), keeping the input order among equal widths, so every tensor starts at a multiple of
its element size. Most models have one element width, and then file order is input order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from megaload_client.types import (
    ShardInfo,
    StateDictIndex,
    StateDictIndexMetadata,
    StateDictOptions,
    StateDictTensor,
)

from ._dtypes import is_castable, safetensors_dtype_name
from ._errors import KeysNotFoundError, ShardNotFoundError
from ._header import RESERVED_NAME, encode_header
from ._options import ShardOptions

__all__ = ["TensorSpec", "TensorEntry", "Shard", "SkippedEntry", "ShardPlan", "plan_shards", "CHECKSUM_ALGORITHM"]

CHECKSUM_ALGORITHM = "xxh3_64"
"""The per-tensor checksum: xxHash XXH3, 64 bits, seed 0, as 16 lowercase hex digits."""

_EXTRA_STATE_SUFFIX = "_extra_state"


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor, for planning without the tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))


@dataclass(frozen=True)
class TensorEntry:
    """One planned tensor. ``dtype`` is what goes on the wire (after any cast),
    ``source_dtype`` what the tensor holds. ``data_offsets`` are safetensors' (relative to the
    data section); ``file_offset`` is where the tensor's first byte sits in the shard file."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    source_dtype: torch.dtype
    nbytes: int
    shard: int
    data_offsets: tuple[int, int]
    file_offset: int
    checksum: str | None = None

    @property
    def safetensors_dtype(self) -> str:
        return safetensors_dtype_name(self.dtype)  # type: ignore[return-value]

    @property
    def needs_cast(self) -> bool:
        return self.dtype != self.source_dtype


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of the mapping that is not streamed, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Shard:
    """One safetensors file of the plan. ``index`` counts from 0; ``filename`` counts from 1,
    as Hugging Face names shards. ``size`` is the whole file, header included. ``names`` are
    in input order, ``layout`` in the order of the data section."""

    index: int
    filename: str
    size: int
    header: bytes = field(repr=False)
    names: tuple[str, ...]
    layout: tuple[str, ...] = field(repr=False)

    @property
    def tensor_count(self) -> int:
        return len(self.names)

    @property
    def header_size(self) -> int:
        return len(self.header)

    @property
    def data_size(self) -> int:
        return self.size - len(self.header)


@dataclass(frozen=True)
class ShardPlan:
    """The complete answer to "what moves": made by :func:`plan_shards`, immutable.

    ``tensors`` maps each streamed name to its entry, in input order; ``total_size`` sums
    their wire bytes (Hugging Face's ``metadata.total_size``).
    """

    options: ShardOptions
    tensors: Mapping[str, TensorEntry]
    shards: tuple[Shard, ...]
    skipped: tuple[SkippedEntry, ...]
    total_size: int

    @property
    def shard_count(self) -> int:
        return len(self.shards)

    def shard(self, index: int) -> Shard:
        """Shard ``index`` (from 0); :class:`ShardNotFoundError` when there is none."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.shards):
            raise ShardNotFoundError(
                f"no shard {index!r}: this plan has {len(self.shards)} shard(s), numbered from 0",
                index=index,
                shard_count=len(self.shards),
            )
        return self.shards[index]

    @property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard filename, in input order."""
        return {name: self.shards[e.shard].filename for name, e in self.tensors.items()}

    @property
    def has_checksums(self) -> bool:
        return bool(self.tensors) and all(e.checksum is not None for e in self.tensors.values())

    @property
    def checksums(self) -> dict[str, str] | None:
        """Tensor name -> checksum hex, or ``None`` until :func:`fill_checksums` ran."""
        if not self.has_checksums:
            return None
        return {name: e.checksum for name, e in self.tensors.items()}  # type: ignore[misc]

    def with_checksums(self, checksums: Mapping[str, str]) -> ShardPlan:
        """A copy of the plan with ``checksums`` (name -> hex) recorded on its entries."""
        missing = [n for n in self.tensors if n not in checksums]
        if missing:
            raise KeyError(f"no checksum given for {len(missing)} tensor(s), first {missing[0]!r}")
        entries = {n: replace(e, checksum=checksums[n]) for n, e in self.tensors.items()}
        return replace(self, tensors=MappingProxyType(entries))

    def hf_index(self) -> dict[str, Any]:
        """The content of Hugging Face's ``model.safetensors.index.json``."""
        return {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}

    def to_index(self) -> StateDictIndex:
        """The index as the wire model (the client's ``StateDictIndex``): the HF index keys
        (``metadata``, ``weight_map``, so the answer also serves as an HF index) plus
        ``total_size``, ``tensors`` (name -> wire dtype, shape, shard index), the shards, the
        skipped names (and ``skipped_reasons``: name -> reason), ``checksums`` (name -> hex;
        empty until :func:`fill_checksums`) and options."""
        return StateDictIndex(
            metadata=StateDictIndexMetadata(total_size=self.total_size),
            total_size=self.total_size,
            shards=[
                ShardInfo(index=s.index, filename=s.filename, size=s.size, tensor_count=s.tensor_count, names=list(s.names))
                for s in self.shards
            ],
            weight_map=self.weight_map,
            tensors={
                name: StateDictTensor(dtype=e.safetensors_dtype, shape=list(e.shape), shard=e.shard)
                for name, e in self.tensors.items()
            },
            checksum_algorithm=CHECKSUM_ALGORITHM,
            checksums=self.checksums or {},
            skipped=[s.name for s in self.skipped],
            skipped_reasons={s.name: s.reason for s in self.skipped},
            options=StateDictOptions.model_validate(self.options.to_dict()),
        )

    def to_dict(self) -> dict[str, Any]:
        """:meth:`to_index` as JSON-ready data."""
        return self.to_index().model_dump(mode="json")


def shard_filename(index: int, count: int) -> str:
    """Hugging Face's shard name: ``model-00001-of-00003.safetensors`` for index 0 of 3."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(tensors: Mapping[Any, Any], options: ShardOptions | None = None) -> ShardPlan:
    """Plan the safetensors shards of ``tensors`` (name -> tensor or tensor-like).

    A value is tensor-like when it is a ``torch.Tensor`` (a meta tensor too) or has a
    ``shape`` and a ``torch.dtype`` ``dtype`` (:class:`TensorSpec`). Names not passing
    ``options.keys`` are dropped silently; the others that cannot be streamed are listed in
    ``plan.skipped`` with the reason: values that are not tensors (``None``, bytes,
    ``BytesIO``...), names ending in ``_extra_state`` (serialized module state, not weights),
    dtypes safetensors has no name for, sparse or other non-strided layouts, tensor subclasses,
    and names that cannot be a safetensors key. A ``keys`` filter that matches no name at all
    (a misspelt prefix, as a rule) raises :class:`KeysNotFoundError` naming the prefixes the
    names do have.
    """
    options = options if options is not None else ShardOptions()
    pending: list[tuple[str, tuple[int, ...], torch.dtype, torch.dtype, int]] = []
    skipped: list[SkippedEntry] = []
    matched = False
    for name, value in tensors.items():
        if not isinstance(name, str):
            skipped.append(SkippedEntry(repr(name), f"name is a {type(name).__name__}, not a string"))
            continue
        if not options.matches(name):
            continue
        matched = True
        described = _describe(name, value)
        if isinstance(described, str):
            skipped.append(SkippedEntry(name, described))
            continue
        shape, source_dtype = described
        dtype = options.dtype if options.dtype is not None and is_castable(source_dtype) else source_dtype
        nbytes = math.prod(shape) * dtype.itemsize
        pending.append((name, shape, dtype, source_dtype, nbytes))

    if options.keys and not matched:
        raise _keys_not_found(options.keys, tensors)
    groups = _group(pending, options.max_shard_bytes)
    entries: dict[str, TensorEntry] = {}
    shards: list[Shard] = []
    for index, group in enumerate(groups):
        shard, shard_entries = _lay_out(index, len(groups), group)
        shards.append(shard)
        entries.update(shard_entries)
    # Keep input order in the mapping (shards were laid out in data order).
    ordered = {item[0]: entries[item[0]] for item in pending}
    return ShardPlan(
        options=options,
        tensors=MappingProxyType(ordered),
        shards=tuple(shards),
        skipped=tuple(skipped),
        total_size=sum(item[4] for item in pending),
    )


MAX_PREFIXES_SHOWN = 16


def key_prefixes(names: Any) -> list[str]:
    """The distinct first two dotted components of ``names`` (``model.decoder``,
    ``lm_head.weight``), in order of first appearance."""
    return list(dict.fromkeys(".".join(name.split(".")[:2]) for name in names if isinstance(name, str)))


def _keys_not_found(patterns: tuple[str, ...], tensors: Mapping[Any, Any]) -> KeysNotFoundError:
    prefixes = key_prefixes(tensors.keys())
    shown = ", ".join(prefixes[:MAX_PREFIXES_SHOWN])
    if len(prefixes) > MAX_PREFIXES_SHOWN:
        shown += f" (and {len(prefixes) - MAX_PREFIXES_SHOWN} more)"
    where = f"its keys start with {shown}" if prefixes else "it has no keys"
    listed = ", ".join(repr(p if len(p) <= 120 else p[:120] + "...") for p in patterns)
    return KeysNotFoundError(
        f"keys filter {listed} matches none of the {len(tensors)} keys of this state dict "
        f"(a pattern is matched at the start of the key); {where}",
        patterns=patterns,
        key_prefixes=prefixes[:MAX_PREFIXES_SHOWN],
    )


def _describe(name: str, value: Any) -> tuple[tuple[int, ...], torch.dtype] | str:
    """(shape, dtype) of a streamable value, else the reason it is skipped."""
    if name == RESERVED_NAME:
        return f"{RESERVED_NAME!r} is reserved by the safetensors header"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not encodable as UTF-8"
    if name.endswith(_EXTRA_STATE_SUFFIX):
        return "extra state (serialized module state, not a weight)"
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            return f"tensor subclass {type(value).__name__} is not supported"
        if value.layout != torch.strided:
            return f"{value.layout} tensors are not supported"
        shape, dtype = tuple(value.shape), value.dtype
    elif isinstance(getattr(value, "dtype", None), torch.dtype) and hasattr(value, "shape"):
        try:
            shape = tuple(int(d) for d in value.shape)
        except (TypeError, ValueError):
            return f"{type(value).__name__} has no integer shape"
        dtype = value.dtype
    else:
        return f"not a tensor ({type(value).__name__})"
    if safetensors_dtype_name(dtype) is None:
        return f"dtype {dtype} has no safetensors name"
    if any(d < 0 for d in shape):
        return f"negative dimension in shape {list(shape)}"
    return shape, dtype


def _group(pending: list, max_bytes: int) -> list[list]:
    """Greedy fill in input order; a tensor larger than ``max_bytes`` gets its own shard."""
    groups: list[list] = []
    current: list = []
    current_bytes = 0
    for item in pending:
        nbytes = item[4]
        if current and current_bytes + nbytes > max_bytes:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += nbytes
    if current:
        groups.append(current)
    return groups


def _lay_out(index: int, count: int, group: list) -> tuple[Shard, dict[str, TensorEntry]]:
    # Wider elements first; sorted() is stable, so input order holds among equal widths.
    layout = sorted(group, key=lambda item: -item[2].itemsize)
    offsets: list[tuple[int, int]] = []
    position = 0
    for item in layout:
        offsets.append((position, position + item[4]))
        position += item[4]
    header = encode_header(
        (name, safetensors_dtype_name(dtype), shape, begin, end)  # type: ignore[misc]
        for (name, shape, dtype, _src, _n), (begin, end) in zip(layout, offsets)
    )
    entries = {
        name: TensorEntry(
            name=name,
            shape=shape,
            dtype=dtype,
            source_dtype=src,
            nbytes=nbytes,
            shard=index,
            data_offsets=(begin, end),
            file_offset=len(header) + begin,
        )
        for (name, shape, dtype, src, nbytes), (begin, end) in zip(layout, offsets)
    }
    shard = Shard(
        index=index,
        filename=shard_filename(index, count),
        size=len(header) + position,
        header=header,
        names=tuple(item[0] for item in group),
        layout=tuple(item[0] for item in layout),
    )
    return shard, entries
