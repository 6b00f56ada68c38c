"""How a megatron-core model's tensors are split across tensor-parallel ranks.

Pure functions over built models and tensors: no process group is touched here. The engine
uses them to assemble full tensors from the ranks' shards (:func:`assemble_full`) and to cut
the slice one rank of another layout would hold (:func:`tp_slice`).

The rule of each tensor follows from the module that holds it (parameter attributes are not
set when weights are loaded instead of initialized)::

    module                                        tensor            split
    VocabParallelEmbedding (word_embeddings)      weight            dim 0, vocabulary rows
    ColumnParallelLinear output_layer             weight            dim 0, vocabulary rows
    ColumnParallelLinear / TE column linears      weight, bias      dim 0 (linear_qkv: whole
        (linear_qkv, linear_fc1)                                    query groups per rank)
    ... linear_fc1 with gated_linear_unit         weight, bias      dim 0 of each half: a rank
                                                                    holds [gate_r; up_r]
    RowParallelLinear / TE row linears            weight            dim 1
        (linear_proj, linear_fc2)                 bias              whole
    everything else (norms, layer_norm_* of fused linears)          whole

Vocabulary rows are padded to a multiple of ``make_vocab_size_divisible_by * tp``: a full
tensor has the rows of a TP=1 load; a slice for ``tp_size`` is cut from the rows padded (with
zeros) to that layout's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ._errors import IncompatibleConfigError

__all__ = [
    "PartitionRule",
    "partition_rules",
    "global_layer_names",
    "padded_vocab_rows",
    "assemble_full",
    "tp_slice",
    "tp_slice_shape",
    "rule_of",
]

_LAYER_RE = re.compile(r"^(model\.decoder\.layers\.)(\d+)(\..*)$")


@dataclass(frozen=True)
class PartitionRule:
    """``dim``: the split dimension, ``None`` when every TP rank holds the whole tensor.
    ``glu``: two stacked halves split separately. ``vocab``: rows are the padded vocabulary.
    ``groups``: attention query groups (linear_qkv), which a TP size must divide."""

    dim: int | None = None
    glu: bool = False
    vocab: bool = False
    groups: int | None = None


_WHOLE = PartitionRule()


def partition_rules(chunks: Any) -> dict[str, PartitionRule]:
    """Rule of every split tensor of ``chunks`` (one model or a one-item list), keyed like
    :func:`model_state_dict` (``model.`` + state-dict name). Tensors not listed are whole."""
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    chunk = _single(chunks)
    config = getattr(chunk, "config", None)
    glu = bool(getattr(config, "gated_linear_unit", False))
    groups = getattr(config, "num_query_groups", None) or getattr(config, "num_attention_heads", None)
    rules: dict[str, PartitionRule] = {}
    for path, module in chunk.named_modules():
        mode = getattr(module, "parallel_mode", None)  # Transformer Engine linears
        names = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        key = f"model.{path}." if path else "model."
        if isinstance(module, VocabParallelEmbedding):
            if "weight" in names:
                rules[key + "weight"] = PartitionRule(dim=0, vocab=True)
        elif isinstance(module, ColumnParallelLinear) or mode == "column":
            vocab = path.endswith("output_layer")
            fused = glu and path.endswith("mlp.linear_fc1")
            qkv = groups if path.endswith("linear_qkv") else None
            for n in ("weight", "bias"):
                if n in names:
                    rules[key + n] = PartitionRule(dim=0, glu=fused, vocab=vocab, groups=qkv)
        elif isinstance(module, RowParallelLinear) or mode == "row":
            if "weight" in names:
                rules[key + "weight"] = PartitionRule(dim=1)
    return rules


def rule_of(rules: dict[str, PartitionRule], name: str) -> PartitionRule:
    return rules.get(name, _WHOLE)


def global_layer_names(chunks: Any) -> dict[str, str]:
    """``model.decoder.layers.<local>.x`` -> ``model.decoder.layers.<global>.x`` for this
    pipeline stage (global = the layer's ``layer_number`` - 1); other names are unchanged."""
    chunk = _single(chunks)
    layers = getattr(getattr(chunk, "decoder", None), "layers", None) or []
    offsets = {i: int(layer.layer_number) - 1 for i, layer in enumerate(layers)}
    out: dict[str, str] = {}
    for name in chunk.state_dict(keep_vars=True):
        key = "model." + name
        m = _LAYER_RE.match(key)
        if m and int(m.group(2)) in offsets:
            key = f"{m.group(1)}{offsets[int(m.group(2))]}{m.group(3)}"
        out["model." + name] = key
    return out


def padded_vocab_rows(chunks: Any, tp_size: int) -> int | None:
    """Rows of the vocabulary tensors of this model built at ``tp_size``, ``None`` when the
    model records no vocabulary padding rule."""
    from ._model import SOURCE_ATTR, _mlm_vocab_size
    from ._provider import GPTModelProvider

    chunk = _single(chunks)
    config = getattr(chunk, "config", None)
    if isinstance(config, GPTModelProvider):
        if config.vocab_size is None:
            return None
        return config.effective_vocab_size(tp_size)
    args = (getattr(chunk, SOURCE_ATTR, None) or {}).get("args")
    if args is None:
        return None
    return _mlm_vocab_size(args, tp_size)


def assemble_full(pieces: list[torch.Tensor], rule: PartitionRule, rows: int | None = None) -> torch.Tensor:
    """The full tensor from the TP ranks' ``pieces`` (in TP rank order). ``rows``: the
    vocabulary rows of a TP=1 load, to which vocabulary tensors are cut."""
    if rule.dim is None or len(pieces) == 1 and not rule.vocab:
        return pieces[0]
    if rule.glu:
        halves = [p.chunk(2, dim=0) for p in pieces]
        full = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    else:
        full = torch.cat(pieces, dim=rule.dim) if len(pieces) > 1 else pieces[0]
    if rule.vocab and rows is not None and full.shape[0] != rows:
        if full.shape[0] < rows:
            raise IncompatibleConfigError(f"vocabulary tensor has {full.shape[0]} rows, fewer than {rows}")
        full = full[:rows]
    return full


def tp_slice_shape(
    shape: tuple[int, ...], rule: PartitionRule, tp_rank: int, tp_size: int, rows: int | None = None
) -> tuple[int, ...]:
    """Shape of :func:`tp_slice` without the data; raises what it raises."""
    _check_slice(shape, rule, tp_rank, tp_size, rows)
    if rule.dim is None or tp_size == 1 and not rule.vocab:
        return tuple(shape)
    out = list(shape)
    size = rows if rule.vocab and rows is not None else shape[rule.dim]
    out[rule.dim] = size // tp_size
    return tuple(out)


def tp_slice(
    full: torch.Tensor, rule: PartitionRule, tp_rank: int, tp_size: int, rows: int | None = None
) -> torch.Tensor:
    """What rank ``tp_rank`` of a TP=``tp_size`` model holds of ``full`` (a TP=1 tensor).
    ``rows``: vocabulary rows at ``tp_size`` (padded); extra rows are zeros. A view when the
    split is a plain one, else a new tensor."""
    _check_slice(tuple(full.shape), rule, tp_rank, tp_size, rows)
    if rule.dim is None:
        return full
    if rule.vocab and rows is not None and rows != full.shape[0]:
        if rows > full.shape[0]:
            pad = full.new_zeros((rows - full.shape[0], *full.shape[1:]))
            full = torch.cat([full, pad], dim=0)
        else:
            full = full[:rows]
    if rule.glu:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=rule.dim)[tp_rank]


def _check_slice(shape: tuple[int, ...], rule: PartitionRule, tp_rank: int, tp_size: int, rows: int | None) -> None:
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise IncompatibleConfigError(f"tp_rank={tp_rank} must be in [0, tp_size={tp_size})", field="tp_rank")
    if rule.dim is None:
        return
    size = rows if rule.vocab and rows is not None else shape[rule.dim]
    parts = tp_size * 2 if rule.glu else tp_size
    if size % parts:
        raise IncompatibleConfigError(
            f"a dimension of {size} cannot be split into {tp_size} equal tensor-parallel parts", field="tp_size"
        )
    if rule.groups and rule.groups % tp_size:
        raise IncompatibleConfigError(
            f"{rule.groups} attention query groups cannot be split across tp_size={tp_size} ranks", field="tp_size"
        )


def _single(chunks: Any) -> Any:
    if isinstance(chunks, (list, tuple)):
        if len(chunks) != 1:
            raise IncompatibleConfigError(
                "virtual pipeline stages (several model chunks per rank) are not supported here",
                field="virtual_pipeline_model_parallel_size",
            )
        return chunks[0]
    return chunks
