"""Loading a Hugging Face model directory into a megatron-core model, and ``import_hf``.

The model is built from ``config.json`` (:func:`hf_model_config`, what upstream's ``AutoBridge``
builds), then each parameter is filled in place from the safetensors files through the Hugging
Face view's tables read backwards (q/k/v interleaved per query group, ``[gate; up]``, vocabulary
rows padded): one Megatron tensor at a time, each made of the few Hugging Face tensors it needs,
so the peak is the model plus one tensor's parts, never the model twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._errors import IncompatibleConfigError, UnmappableModelError
from ._extra_state import EXTRA_STATE
from ._hf_config import provider_from_hf_config
from ._hf_dir import HF_CONFIG, HFWeights, hf_model_dir, read_hf_config
from ._provider import GPTModelProvider

__all__ = ["hf_model_config", "fill_from_hf", "import_hf"]



def hf_model_config(hf_dir: str | os.PathLike) -> GPTModelProvider:
    """Our provider for a Hugging Face model directory (a fresh object on every call)."""
    p = Path(os.fspath(hf_dir)).expanduser().absolute()
    return provider_from_hf_config(read_hf_config(p), path=p / HF_CONFIG, hf_model_id=str(p))


def _architecture(config: Any, hf_dir: Path) -> str:
    arch = getattr(config, "hf_architecture", None)
    return arch if arch is not None else hf_model_config(hf_dir).hf_architecture


def fill_from_hf(model: list, hf_dir: Path, config: Any, *, return_state_dict: bool = False):
    """Copy the directory's weights into ``model`` (one chunk, one rank), checked against the
    config first: every tensor's shape, nothing missing, nothing left over."""
    from megatron.core import parallel_state

    from ..hf import hf_view

    if len(model) != 1 or parallel_state.get_tensor_model_parallel_world_size() != 1 \
            or parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise IncompatibleConfigError(
            f"{hf_dir}: a Hugging Face directory loads on one rank (tensor and pipeline parallel size 1)",
            path=hf_dir, field="tensor_model_parallel_size")
    weights = HFWeights(hf_dir)
    view = hf_view(config, architecture=_architecture(config, hf_dir))
    try:
        plan = view.mcore_plan(weights.specs, padded_vocab_size=config.effective_vocab_size())
    except UnmappableModelError as e:
        where = weights.file_of.get(e.field)
        named = f"{where}: " if where is not None else f"{hf_dir}: "
        raise UnmappableModelError(named + e.message, field=e.field, architecture=e.architecture,
                                   path=where or hf_dir) from e
    chunk = model[0]
    targets = {k: v for k, v in chunk.state_dict(keep_vars=True).items() if EXTRA_STATE not in k}
    planned = {name.removeprefix("model."): spec for name, spec in plan.items()}
    missing = sorted(set(targets) - set(planned))
    extra = sorted(set(planned) - set(targets))
    if missing or extra:
        raise IncompatibleConfigError(
            f"{hf_dir}: the model built from {HF_CONFIG} has tensors the mapping does not fill ({missing[:3]}) "
            f"or lacks ones it fills ({extra[:3]})", path=hf_dir)
    try:
        with torch.no_grad():
            for name, spec in planned.items():
                target = targets[name]
                if tuple(target.shape) != spec.shape:
                    raise IncompatibleConfigError(
                        f"{hf_dir}: model.{name} is {list(target.shape)} in the model, {list(spec.shape)} from the files",
                        path=hf_dir, field=name)
                _fill(target, spec, [weights.tensor(s) for s in spec.sources])
    finally:
        weights.close()
    if return_state_dict:
        return {"model": {k: v.detach() for k, v in chunk.state_dict().items() if EXTRA_STATE not in k}}
    return None


def _fill(target: torch.Tensor, spec: Any, parts: list[torch.Tensor]) -> None:
    """``target`` := the merge of ``parts``. A tensor that is one Hugging Face tensor as it is
    (``copy``) or with zero rows appended (``vocab``) is copied straight into the parameter, so no
    merged copy is made; q/k/v and gate/up are merged first (one tensor's worth)."""
    kind = spec.transform.name
    if kind in ("copy", "vocab"):
        (part,) = parts
        if tuple(part.shape[1:]) != tuple(target.shape[1:]) or part.shape[0] > target.shape[0]:
            raise IncompatibleConfigError(f"{spec.sources[0]} is {list(part.shape)}, {spec.name} is "
                                          f"{list(target.shape)}", field=spec.sources[0])
        if kind == "copy" and part.shape[0] != target.shape[0]:
            raise IncompatibleConfigError(f"{spec.sources[0]} is {list(part.shape)}, {spec.name} is "
                                          f"{list(target.shape)}", field=spec.sources[0])
        target[: part.shape[0]].copy_(part)
        target[part.shape[0]:].zero_()
        return
    target.copy_(spec.build(parts))


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the Megatron Bridge checkpoint of a Hugging Face model directory to ``out``
    (torch_dist, ``run_config.yaml``, the directory's tokenizer bundled; atomic, as every save).
    Returns ``out`` as an absolute path. Raises NotACheckpointError when ``hf_dir`` is not a
    Hugging Face model directory, CheckpointExistsError when ``out`` holds a checkpoint and
    ``overwrite`` is false; nothing is written at ``out`` on any error."""
    from ._errors import CheckpointNotFoundError, NotACheckpointError
    from ._model import load_megatron_model
    from ._save import check_save_destination, save_megatron_model

    src = Path(os.fspath(hf_dir)).expanduser().absolute()
    if not src.exists():
        raise CheckpointNotFoundError(f"no such directory: {src}", path=src)
    if hf_model_dir(src) is None:
        raise NotACheckpointError(f"{src} is not a Hugging Face model directory (config.json with model.safetensors "
                                  f"or model.safetensors.index.json)", path=src)
    dest = Path(os.fspath(out)).expanduser().absolute()
    check_save_destination(dest, overwrite)  # before the (long) load
    model = load_megatron_model(src, use_cpu_init=True)
    has_tokenizer = any((src / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    save_megatron_model(model, dest, hf_tokenizer_path=src if has_tokenizer else None, overwrite=overwrite)
    return dest
