"""``save_megatron_model``: a model-only checkpoint in the layout Megatron Bridge writes.

::

    path/
        latest_checkpointed_iteration.txt   "0"
        iter_0000000/
            .metadata  __<rank>_<n>.distcp   tensors (torch_dist, via SyncTorchDistSaveStrategy)
            common.pt                         checkpoint_version, iteration, content_metadata
            metadata.json                     {"sharded_backend": "torch_dist", ...}
            run_config.yaml                   model (GPTModelProvider) and tokenizer sections
            tokenizer/                        tokenizer files, when there is a tokenizer

Atomicity: everything is written into a fresh sibling directory ``.<name>.partial-<id>`` and
moved to ``path`` by one rename (or an atomic exchange with the previous checkpoint when
overwriting); see :mod:`._staging`. A crash leaves at worst a ``.partial-`` sibling with its
owner file; ``path`` holds either what was there before or the complete new checkpoint.
Before each save, what dead saves to the same ``path`` left is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from ._errors import (
    CheckpointError,
    IncompatibleConfigError,
    UnsupportedCheckpointError,
)
from ._layout import RUN_CONFIG_FILENAME, TOKENIZER_DIRNAME, TRACKER_FILENAME, iteration_dir_name
from ._model import SOURCE_ATTR, model_config
from ._provider import GPT_PROVIDER_FIELDS, GPTModelProvider
from ._run_config import run_config_for_provider
from ._staging import Staging, check_destination, remove_stale_saves
from ._writer import SyncTorchDistSaveStrategy

__all__ = ["save_megatron_model", "check_save_destination", "provider_for_model", "SOURCE_ATTR"]

logger = logging.getLogger(__name__)


CHECKPOINT_VERSION = 3.0
CONTENT_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}


def _chunks(model) -> list:
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    if not chunks:
        raise IncompatibleConfigError("save_megatron_model needs at least one model chunk", field="model")
    return chunks


def provider_for_model(chunks: list) -> GPTModelProvider:
    """The GPTModelProvider describing ``chunks``: its own config when it is one, otherwise a
    provider built from a Megatron-LM TransformerConfig plus the GPT fields of the model."""
    from megatron.core.models.gpt import GPTModel

    first = chunks[0]
    if not isinstance(first, GPTModel):
        raise UnsupportedCheckpointError(f"only megatron-core GPT models can be saved, got {type(first).__name__}")
    config = model_config(chunks)
    if isinstance(config, GPTModelProvider):
        return config
    source = getattr(first, SOURCE_ATTR, None) or {}
    args = source.get("args")
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in GPT_PROVIDER_FIELDS}
    spec = "local_layer_spec"
    if args is not None and getattr(args, "transformer_impl", "local") == "transformer_engine":
        spec = "transformer_engine_layer_spec"
    vocab = first.vocab_size
    should_pad = False
    divisible = 128
    if args is not None and isinstance(getattr(args, "vocab_size", None), int):
        divisible = getattr(args, "make_vocab_size_divisible_by", 128) or 1
        from ._provider import padded_vocab_size

        if padded_vocab_size(args.vocab_size, divisible, config.tensor_model_parallel_size) == first.vocab_size:
            vocab, should_pad = args.vocab_size, True
    rotary = getattr(first, "rotary_pos_emb", None)
    kwargs.update(
        vocab_size=vocab,
        should_pad_vocab=should_pad,
        make_vocab_size_divisible_by=divisible,
        seq_length=first.max_sequence_length,
        position_embedding_type=first.position_embedding_type,
        share_embeddings_and_output_weights=first.share_embeddings_and_output_weights,
        parallel_output=first.parallel_output,
        fp16_lm_cross_entropy=first.fp16_lm_cross_entropy,
        transformer_layer_spec=spec,
        rotary_percent=getattr(args, "rotary_percent", 1.0) if args is not None else 1.0,
        rotary_base=getattr(args, "rotary_base", 10000) if args is not None else getattr(rotary, "rotary_base", 10000),
        rope_scaling=getattr(args, "use_rope_scaling", False) if args is not None else False,
    )
    if args is not None and hasattr(args, "rope_scaling_factor"):
        kwargs["rope_scaling_factor"] = args.rope_scaling_factor
    try:
        return GPTModelProvider(**kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise IncompatibleConfigError(f"cannot describe the model as a GPT provider: {e}") from e


def _verify_written(iter_dir: Path) -> None:
    """Check that every item ``.metadata`` lists lies inside a data file that exists, before the
    checkpoint is published (a writer that lost a file must not produce a checkpoint)."""
    from ._pickle import load_dcp_metadata

    metadata = load_dcp_metadata(iter_dir)
    sizes: dict[str, int] = {}
    for index, info in (metadata.storage_data or {}).items():
        name = str(info.relative_path)
        if name not in sizes:
            try:
                sizes[name] = (iter_dir / name).stat().st_size
            except FileNotFoundError as e:
                raise CheckpointError(f"save incomplete: {iter_dir / name} was not written", path=iter_dir) from e
        if info.offset + info.length > sizes[name]:
            raise CheckpointError(f"save incomplete: {iter_dir / name} is shorter than its metadata says", path=iter_dir)
    listed = {k for k in metadata.state_dict_metadata}
    stored = {index.fqn for index in (metadata.storage_data or {})}
    if listed - stored:
        raise CheckpointError(f"save incomplete: no data written for {sorted(listed - stored)[:5]}", path=iter_dir)


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / TRACKER_FILENAME).exists() or any(p.name.startswith("iter_") or p.name == "release" for p in path.iterdir())


def check_save_destination(path: Path, overwrite: bool) -> None:
    """Raise what :func:`save_megatron_model` would refuse ``path`` for: a parent that does
    not exist, a file or symlink there, a directory holding something other than a
    checkpoint, or a checkpoint when ``overwrite`` is false (CheckpointExistsError). An
    unreadable directory raises the OSError. Called by the save itself, and by callers that
    want the answer before they start one."""
    check_destination(
        path,
        overwrite,
        verb="save",
        replaceable=_is_checkpoint_dir,
        refusal="the directory holds files that are not a checkpoint; refusing to replace them",
        taken=f"a checkpoint already exists at {path}",
    )


_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _tokenizer_section(chunks: list, iter_dir: Path, hf_tokenizer_path, hf_tokenizer_kwargs) -> dict | None:
    """Write tokenizer files under ``iter_dir/tokenizer`` and return the run-config section.

    With ``hf_tokenizer_path`` that Hugging Face tokenizer is bundled; otherwise the tokenizer
    recorded in the checkpoint the model was loaded from (if any) is carried over."""
    from ._tokenizer import bundle_tokenizer_files
    from ._tokenizer_config import TokenizerConfig, recorded_tokenizer_config

    dest = iter_dir / TOKENIZER_DIRNAME
    src_dir = None
    if hf_tokenizer_path is not None:
        kwargs = dict(hf_tokenizer_kwargs or {})
        config = TokenizerConfig(
            tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf_tokenizer_path), hf_tokenizer_kwargs=kwargs
        )
    else:
        source = getattr(chunks[0], SOURCE_ATTR, None) or {}
        hf_dir = source.get("hf_dir")
        if hf_dir is not None and any((Path(hf_dir) / f).exists() for f in _HF_TOKENIZER_FILES):
            return _tokenizer_section(chunks, iter_dir, hf_dir, hf_tokenizer_kwargs)  # loaded from an HF directory
        if source.get("iteration_dir") is None:
            return None
        src_dir = Path(source["iteration_dir"])
        try:
            config = recorded_tokenizer_config(src_dir)
        except CheckpointError as e:
            logger.warning("not carrying the tokenizer of %s over: %s", src_dir, e)
            return None
        if config is None:
            return None
    try:
        bundle_tokenizer_files(
            config, dest, iter_dir=src_dir, trust_remote_code=bool(config.hf_tokenizer_kwargs.get("trust_remote_code"))
        )
    except CheckpointError:
        if hf_tokenizer_path is not None:
            raise
        logger.warning("tokenizer files of %s could not be bundled; recording its settings only", src_dir)
    return config.to_run_config_section()


def save_megatron_model(
    model,
    path: str | os.PathLike,
    ckpt_format: str = "torch_dist",
    hf_tokenizer_path: str | os.PathLike | None = None,
    low_memory_save: bool = False,
    hf_tokenizer_kwargs: dict | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Save ``model`` (a chunk or list of chunks) as a model-only Megatron Bridge checkpoint.

    Collective: every rank of the default process group calls it (a temporary single-process
    group is created when none exists). Works on CPU-only hosts. The result loads with this
    library and with Megatron Bridge's ``load_megatron_model``. Models loaded from Megatron-LM
    checkpoints are saved too (their config becomes a GPT provider), with their tokenizer.
    ``low_memory_save=True`` frees the model's parameters after the save (the model is unusable
    afterwards, as upstream documents); the writer never copies tensors, so peak memory is the
    model itself. Raises CheckpointExistsError when ``path`` holds a checkpoint and
    ``overwrite`` is false.
    """
    from megatron.core import dist_checkpointing

    from ._distributed import temporary_distributed_context

    if ckpt_format != "torch_dist":
        raise UnsupportedCheckpointError(f"ckpt_format {ckpt_format!r} is not supported; only 'torch_dist'")
    chunks = _chunks(model)
    provider = provider_for_model(chunks)
    path = Path(os.fspath(path)).expanduser().absolute()
    own_context = not (dist.is_available() and dist.is_initialized())
    ctx = temporary_distributed_context("gloo") if own_context else contextlib.nullcontext()
    with ctx:
        rank = dist.get_rank()
        stage = None
        if rank == 0:
            check_save_destination(path, overwrite)
            remove_stale_saves(path.parent, name=path.name)
            stage = Staging.create(path)
        box = [str(stage.path) if stage else None]
        dist.broadcast_object_list(box, src=0)
        staging = Path(box[0])
        try:
            iter_dir = staging / iteration_dir_name(0)
            if rank == 0:
                iter_dir.mkdir()
            dist.barrier()
            if len(chunks) == 1:
                state = {"model": chunks[0].sharded_state_dict(metadata=dict(CONTENT_METADATA))}
            else:
                state = {f"model{i}": c.sharded_state_dict(metadata=dict(CONTENT_METADATA)) for i, c in enumerate(chunks)}
            state["checkpoint_version"] = CHECKPOINT_VERSION
            state["iteration"] = 0
            dist_checkpointing.save(
                state, str(iter_dir), SyncTorchDistSaveStrategy(), content_metadata=dict(CONTENT_METADATA)
            )
            if rank == 0:
                _verify_written(iter_dir)
                tokenizer = _tokenizer_section(chunks, iter_dir, hf_tokenizer_path, hf_tokenizer_kwargs)
                run_config = run_config_for_provider(provider, tokenizer, save_dir=str(path))
                (iter_dir / RUN_CONFIG_FILENAME).write_text(
                    yaml.safe_dump(run_config, sort_keys=False, default_flow_style=False), encoding="utf-8"
                )
                (staging / TRACKER_FILENAME).write_text("0", encoding="utf-8")
                published, stage = stage, None
                published.publish()
            dist.barrier()
        except BaseException:
            if stage is not None:
                stage.discard()
            raise
    if low_memory_save:
        for chunk in chunks:
            for param in chunk.parameters():
                param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        if isinstance(model, list):
            model.clear()
