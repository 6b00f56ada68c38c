"""A Megatron model seen as a Hugging Face model: :func:`hf_view`, :class:`HFView`, :class:`HFTensor`.

::

    view = hf_view(config, megatron_args=args, tokenizer=tokenizer)   # UnmappableModelError if none
    view.config_json, view.generation_config_json                      # dicts for the two files
    plan = view.tensor_plan({name: (shape, dtype), ...})               # HF name -> HFTensor, HF order
    tensor = plan[hf_name].build([mcore_state[s] for s in plan[hf_name].sources])
    for hf_name, tensor in view.export(mcore_state): ...                # the same, one at a time
    for mcore_name, tensor in view.import_tensors(hf_state): ...        # the other way (same tables)

The plan needs names, shapes and dtypes only; it checks every Megatron tensor against the
config (shapes, nothing left over, nothing missing) before any tensor data is touched.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..checkpoint import UnmappableModelError
from ._architectures import Architecture, Source, choose_architecture
from ._facts import ModelFacts, model_facts
from ._hints import provider_hint
from ._transforms import Dims, Transform

__all__ = ["HFView", "HFTensor", "hf_view"]

_PREFIX = "model."


@dataclass(frozen=True)
class HFTensor:
    """One tensor of the Hugging Face model: name, shape, dtype, the Megatron tensors it is made
    of (``sources``, keys as the caller spelled them) and how (:meth:`build`)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    sources: tuple[str, ...]
    transform: Transform = field(repr=False)
    part: str = field(default="", repr=False)
    dims: Dims = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n

    def build(self, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The tensor, from the source tensors in ``sources`` order. Contiguous; a view of the
        source when it can be one (a copy of this one tensor otherwise, e.g. q/k/v of several
        query groups)."""
        if len(tensors) != len(self.sources):
            raise ValueError(f"{self.name} is built from {len(self.sources)} tensor(s), got {len(tensors)}")
        (source,) = tensors
        out = self.transform.part(source, self.part, self.dims)
        if tuple(out.shape) != self.shape:
            raise ValueError(f"{self.name}: built {tuple(out.shape)}, planned {self.shape} (source changed?)")
        return out

    def rows(self, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The tensor's elements in row-major order as a view of the source, never a copy
        (see :meth:`Transform.part_rows`; its shape may differ from :attr:`shape`): what a
        stream reads, in bounded runs, instead of the contiguous :meth:`build`."""
        if len(tensors) != len(self.sources):
            raise ValueError(f"{self.name} is built from {len(self.sources)} tensor(s), got {len(tensors)}")
        (source,) = tensors
        out = self.transform.part_rows(source, self.part, self.dims)
        if out.numel() != math.prod(self.shape):
            raise ValueError(f"{self.name}: {out.numel()} elements, planned {list(self.shape)} (source changed?)")
        return out


def _spec_of(value: Any) -> tuple[tuple[int, ...], torch.dtype]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], torch.dtype):
        return tuple(int(d) for d in value[0]), value[1]
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or not isinstance(dtype, torch.dtype):
        raise TypeError(f"expected a tensor, a (shape, dtype) pair or a TensorSpec, got {type(value).__name__}")
    return tuple(int(d) for d in shape), dtype


@dataclass(frozen=True)
class HFView:
    """The Hugging Face form of one Megatron model: architecture, config files, tensor plan."""

    architecture: str
    model_type: str
    facts: ModelFacts = field(repr=False)
    arch: Architecture = field(repr=False)
    config_json: dict[str, Any] = field(repr=False)
    generation_config_json: dict[str, Any] = field(repr=False)

    @property
    def dims(self) -> Dims:
        f = self.facts
        return Dims(f.num_attention_heads, f.num_query_groups, f.head_dim, f.vocab_size)

    def tensor_plan(self, mcore_specs: Mapping[str, Any]) -> dict[str, HFTensor]:
        """HF name -> :class:`HFTensor`, in save_pretrained's order, for a Megatron state dict
        described by ``mcore_specs`` (flat name -> tensor, ``(shape, dtype)`` or TensorSpec;
        names with or without the leading ``model.``).

        Raises UnmappableModelError naming the Megatron tensor that is missing, has a shape the
        config contradicts, or has no Hugging Face counterpart in this architecture.
        """
        by_name: dict[str, str] = {}
        for key in mcore_specs:
            by_name[key[len(_PREFIX):] if key.startswith(_PREFIX) else key] = key
        sizes = self.arch.dim_sizes(self.facts)
        dims = self.dims
        plan: dict[str, HFTensor] = {}
        used: set[str] = set()
        resolved: dict[tuple[Source, tuple[tuple[str, int], ...]], tuple[str, tuple[int, ...], torch.dtype]] = {}
        for hf_name, source, part, at in self.arch.entries(self.facts):
            token = (source, tuple(sorted(at.items())))
            if token not in resolved:
                key = self._find(source, at, by_name)
                shape, dtype = _spec_of(mcore_specs[by_name[key]])
                self._check_shape(key, shape, source, sizes)
                resolved[token] = (key, shape, dtype)
                used.add(key)
            key, shape, dtype = resolved[token]
            plan[hf_name] = HFTensor(
                name=hf_name,
                shape=source.transform.part_shape(shape, part, dims),
                dtype=dtype,
                sources=(by_name[key],),
                transform=source.transform,
                part=part,
                dims=dims,
            )
        leftover = [k for k in by_name if k not in used]
        if self.facts.tied_embeddings and "output_layer.weight" in leftover:
            leftover.remove("output_layer.weight")  # tied: the embedding is the output layer
        if leftover:
            raise UnmappableModelError(
                f"{self.architecture}: Megatron tensor {by_name[leftover[0]]!r} has no Hugging Face counterpart"
                + (f" ({len(leftover) - 1} more)" if len(leftover) > 1 else ""),
                field=by_name[leftover[0]],
                architecture=self.architecture,
            )
        return plan

    def _find(self, source: Source, at: dict[str, int], by_name: Mapping[str, str]) -> str:
        spellings = [name.format(**at) for name in source.names]
        for name in spellings:
            if name in by_name:
                return name
        raise UnmappableModelError(
            f"{self.architecture}: the config implies Megatron tensor {_PREFIX}{spellings[0]!r}"
            + (f" (or {', '.join(_PREFIX + s for s in spellings[1:])})" if len(spellings) > 1 else "")
            + ", which the state dict does not have",
            field=_PREFIX + spellings[0],
            architecture=self.architecture,
        )

    def _check_shape(self, key: str, shape: tuple[int, ...], source: Source, sizes: Mapping[str, int]) -> None:
        want = tuple(sizes[d] for d in source.dims)
        rows_ok = len(shape) == len(want) and (
            shape[0] >= want[0] if source.dims[0] == "vocab" else shape[0] == want[0]
        )
        if not rows_ok or tuple(shape[1:]) != want[1:]:
            spelled = "x".join(f"{d}={sizes[d]}" for d in source.dims)
            raise UnmappableModelError(
                f"{self.architecture}: Megatron tensor {_PREFIX}{key} is {list(shape)}, but the config says "
                f"[{spelled}]{' (at least, for the vocabulary)' if source.dims[0] == 'vocab' else ''}",
                field=_PREFIX + key,
                architecture=self.architecture,
            )

    def export(self, mcore_tensors: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) in save_pretrained's order, each built when reached."""
        plan = self.tensor_plan(mcore_tensors)
        for name, spec in plan.items():
            yield name, spec.build([mcore_tensors[s] for s in spec.sources])

    def mcore_plan(self, hf_specs: Mapping[str, Any], *, padded_vocab_size: int | None = None):
        """The other way: Megatron name (``model.``-prefixed, local spec) -> ``MegatronTensor``
        made of Hugging Face tensors described by ``hf_specs``; see :func:`._import.mcore_plan`."""
        from ._import import mcore_plan

        return mcore_plan(self, hf_specs, padded_vocab_size=padded_vocab_size)

    def import_tensors(self, hf_tensors: Mapping[str, torch.Tensor], *,
                       padded_vocab_size: int | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(Megatron name, tensor) merged from Hugging Face tensors, one at a time."""
        from ._import import import_tensors

        return import_tensors(self, hf_tensors, padded_vocab_size=padded_vocab_size)

    def lazy_tensors(self, mcore_tensors: Mapping[str, torch.Tensor]):
        """The HF tensors as a :class:`megaload.streaming.LazyTensors` (specs now, data built
        per tensor when the writer reaches it), ready for ``plan_shards``/``iter_shard_bytes``."""
        from ._lazy import HFLazyTensors

        return HFLazyTensors(self.tensor_plan(mcore_tensors), mcore_tensors)


def _generation_config(facts: ModelFacts) -> dict[str, Any]:
    out: dict[str, Any] = {"_from_model_config": True}
    for name in ("bos", "eos", "pad"):
        if name in facts.special_ids:
            out[f"{name}_token_id"] = facts.special_ids[name]
    return out


def hf_view(
    config: Any,
    *,
    megatron_args: argparse.Namespace | None = None,
    tokenizer: Any = None,
    architecture: str | None = None,
    hint: str | None = None,
) -> HFView:
    """The Hugging Face view of a model config (what ``load_model_config`` returns: our
    GPTModelProvider, or a Megatron-LM TransformerConfig with its args).

    ``tokenizer`` (what ``load_tokenizer`` returns) gives the bos/eos/pad ids and, for
    Megatron-LM checkpoints without ``args.vocab_size``, the vocabulary size. ``architecture``
    names the target (``"MistralForCausalLM"`` or ``"mistral"``); by default the model's
    features choose it: experts -> Qwen3-MoE, q/k norm -> Qwen3, q/k/v biases -> Qwen2, sliding
    window -> Mistral, else Llama. ``hint`` (default: the architecture a Bridge import came
    from, by the provider class its run config records) is preferred to that choice when it can
    hold the model. Raises UnmappableModelError(field=...) when the model cannot be that (or any)
    Hugging Face model.
    """
    facts = model_facts(config, megatron_args=megatron_args, tokenizer=tokenizer)
    arch = choose_architecture(facts, architecture, hint=hint if hint is not None else provider_hint(config))
    return HFView(
        architecture=arch.name,
        model_type=arch.model_type,
        facts=facts,
        arch=arch,
        config_json=arch.config_json(facts),
        generation_config_json=_generation_config(facts),
    )
