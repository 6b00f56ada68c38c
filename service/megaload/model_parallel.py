"""Models split over the ranks of a torchrun job: what each rank holds, and full tensors.

Only the engine's worker thread calls the functions that talk to other ranks
(:func:`agree`, :func:`send_part`, :func:`receive_full`); they run inside engine commands
that every rank executes in the same order. Call order for a load (every rank)::

    parts = describe_local(chunks, tp_rank, pp_rank)        # names, rules, local shapes
    outcome = agree(error, parts)                           # all ranks: one all_gather_object
    directory = Directory.build(outcome.parts, ...)         # rank 0: full names, owners, specs

and for one full tensor (command ``gather_tensor``, every rank)::

    rank 0:  receive_full(directory, name, local)           # its own part + recv from owners
    others:  send_part(local, name)                         # send if this rank owns a part

Full names are those of a TP=1, PP=1 load (:func:`megaload.checkpoint.model_state_dict`),
layers numbered globally; full tensors equal that load's, bit for bit (see
:mod:`megaload.checkpoint._partition` for the split rules). Only one data-parallel replica is
supported (T*P == world size), so each part has exactly one owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import (
    CorruptCheckpointError,
    PartitionRule,
    assemble_full,
    global_layer_names,
    partition_rules,
    rule_of,
    tp_slice,
    tp_slice_shape,
)
from .streaming import LazyTensors, TensorSpec

__all__ = [
    "LocalPart",
    "describe_local",
    "agree",
    "Directory",
    "send_part",
    "receive_full",
    "GatheredTensors",
    "SlicedTensors",
]

logger = logging.getLogger(__name__)

_WHOLE = PartitionRule()


@dataclass(frozen=True)
class LocalPart:
    """One tensor of one rank: its full name, its key in the rank's state dict, its rule."""

    name: str
    local_key: str
    rule: PartitionRule
    shape: tuple[int, ...]
    dtype: torch.dtype


def describe_local(chunks: list[Any], state_dict: Mapping[str, torch.Tensor]) -> list[LocalPart]:
    """This rank's tensors, in its state-dict order, under their full names."""
    rules = partition_rules(chunks)
    names = global_layer_names(chunks)
    chunk = chunks[0]
    tied_copy = bool(getattr(chunk, "share_embeddings_and_output_weights", False)) and not getattr(
        chunk, "pre_process", True
    )
    out = []
    for key, tensor in state_dict.items():
        if tied_copy and key == "model.output_layer.weight":
            continue  # the last stage's copy of a tied embedding: a TP=1 load has none
        out.append(LocalPart(names.get(key, key), key, rule_of(rules, key), tuple(tensor.shape), tensor.dtype))
    return out


@dataclass(frozen=True)
class RankParts:
    rank: int
    tp_rank: int
    pp_rank: int
    error: str | None
    parts: list[LocalPart]


def agree(rank: int, tp_rank: int, pp_rank: int, error: BaseException | None, parts: list[LocalPart]) -> list[RankParts]:
    """Every rank's outcome of a load, on every rank (one ``all_gather_object``)."""
    import torch.distributed as dist

    mine = RankParts(rank, tp_rank, pp_rank, None if error is None else f"{type(error).__name__}: {error}", parts)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def first_failure(outcomes: list[RankParts], path: str) -> CorruptCheckpointError | None:
    """The error to report when another rank failed to load (``None`` when none did)."""
    for o in outcomes:
        if o.error is not None:
            return CorruptCheckpointError(f"rank {o.rank} failed to load the checkpoint: {o.error}", path=path)
    return None


@dataclass
class Owner:
    rank: int
    local_key: str
    shape: tuple[int, ...]


@dataclass
class Directory:
    """Rank 0's map of a multi-rank model: full names in TP=1 order, the rule, the owners of
    the parts (in TP rank order; one owner for a whole tensor) and the full spec."""

    rules: dict[str, PartitionRule]
    owners: dict[str, list[Owner]]
    specs: dict[str, TensorSpec]
    vocab_rows: int | None

    @classmethod
    def build(cls, outcomes: list[RankParts], vocab_rows: int | None) -> Directory:
        rules: dict[str, PartitionRule] = {}
        owners: dict[str, list[tuple[int, Owner]]] = {}
        dtypes: dict[str, torch.dtype] = {}
        for o in sorted(outcomes, key=lambda o: (o.pp_rank, o.tp_rank)):
            for part in o.parts:
                rules.setdefault(part.name, part.rule)
                dtypes.setdefault(part.name, part.dtype)
                found = owners.setdefault(part.name, [])
                if part.rule.dim is None and found:
                    continue  # a whole tensor: the lowest TP rank's copy
                found.append((o.tp_rank, Owner(o.rank, part.local_key, part.shape)))
        specs: dict[str, TensorSpec] = {}
        flat: dict[str, list[Owner]] = {}
        for name, found in owners.items():
            flat[name] = [owner for _, owner in sorted(found, key=lambda item: item[0])]
            specs[name] = TensorSpec(_full_shape(flat[name], rules[name], vocab_rows), dtypes[name])
        return cls(rules=rules, owners=flat, specs=specs, vocab_rows=vocab_rows)


def _full_shape(owners: list[Owner], rule: PartitionRule, vocab_rows: int | None) -> tuple[int, ...]:
    shape = list(owners[0].shape)
    if rule.dim is None:
        return tuple(shape)
    shape[rule.dim] = sum(o.shape[rule.dim] for o in owners)
    if rule.vocab and vocab_rows is not None:
        shape[0] = min(shape[0], vocab_rows)
    return tuple(shape)


def send_part(rank: int, local: Mapping[str, torch.Tensor], owners_hint: dict[str, str], name: str) -> None:
    """A rank other than 0: send this rank's part of ``name`` to rank 0 if rank 0's
    directory lists it as an owner (``owners_hint``: full name -> local key of the parts
    this rank sends)."""
    import torch.distributed as dist

    key = owners_hint.get(name)
    if key is not None:
        dist.send(local[key].detach().contiguous(), dst=0)


def receive_full(directory: Directory, local: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    """Rank 0: the full tensor ``name``, from its own part and those the owners send."""
    import torch.distributed as dist

    pieces = []
    dtype = directory.specs[name].dtype
    device = next(iter(local.values())).device if local else torch.device("cpu")
    for owner in directory.owners[name]:
        if owner.rank == 0:
            pieces.append(local[owner.local_key].detach())
            continue
        buffer = torch.empty(owner.shape, dtype=dtype, device=device)
        dist.recv(buffer, src=owner.rank)
        pieces.append(buffer)
    return assemble_full(pieces, directory.rules[name], directory.vocab_rows)


def sent_by(directory: Directory) -> dict[int, dict[str, str]]:
    """Per rank other than 0: full name -> local key of the parts it sends."""
    out: dict[int, dict[str, str]] = {}
    for name, owners in directory.owners.items():
        for owner in owners:
            if owner.rank != 0:
                out.setdefault(owner.rank, {})[name] = owner.local_key
    return out


class GatheredTensors(LazyTensors):
    """Rank 0's view of a multi-rank model: full specs; ``fetch`` gathers one full tensor
    through the engine (``gather``: a blocking call that runs the collective command)."""

    def __init__(self, directory: Directory, gather: Callable[[str], torch.Tensor]) -> None:
        self.directory = directory
        self._gather = gather

    @property
    def specs(self) -> Mapping[str, TensorSpec]:
        return self.directory.specs

    def fetch(self, name: str) -> torch.Tensor:
        return self._gather(name)

    def clear(self) -> None:
        self.directory = Directory({}, {}, {}, None)


@dataclass
class SlicedTensors(LazyTensors):
    """What rank ``tp_rank`` of a TP=``tp_size`` model holds of each tensor of ``source``
    (full tensors, a plain mapping or a :class:`GatheredTensors`)."""

    source: Mapping[str, Any]
    rules: Mapping[str, PartitionRule]
    tp_rank: int
    tp_size: int
    vocab_rows: int | None
    _specs: dict[str, TensorSpec] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        base = self.source.specs if isinstance(self.source, LazyTensors) else self.source
        for name, value in base.items():
            if not isinstance(value, (torch.Tensor, TensorSpec)):
                continue
            rule = self.rules.get(name, _WHOLE)
            shape = tp_slice_shape(tuple(value.shape), rule, self.tp_rank, self.tp_size, self.vocab_rows)
            self._specs[name] = TensorSpec(shape, value.dtype)

    @property
    def specs(self) -> Mapping[str, TensorSpec]:
        return self._specs

    def fetch(self, name: str) -> torch.Tensor:
        full = self.source.fetch(name) if isinstance(self.source, LazyTensors) else self.source[name]
        out = tp_slice(full, self.rules.get(name, _WHOLE), self.tp_rank, self.tp_size, self.vocab_rows)
        return out if out.is_contiguous() else out.contiguous()
