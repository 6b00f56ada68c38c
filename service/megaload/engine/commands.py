"""The engine's commands: frozen, picklable values, one class per thing the engine does.

A command names what to do and carries its arguments; :mod:`megaload.engine._handlers`
holds what each does. Under torchrun rank 0 broadcasts the command object itself and every
rank runs the same handler, so a command carries only plain values (strings, numbers,
dicts of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Command",
    "CheckpointCommand",
    "ModelCommand",
    "Startup",
    "Shutdown",
    "Heartbeat",
    "ModelConfig",
    "HFView",
    "TensorMetadata",
    "EstimateBytes",
    "Load",
    "GatherTensor",
    "Release",
    "Save",
    "TokenizerInfo",
    "Tokenize",
]


@dataclass(frozen=True)
class Command:
    """Base of every command. ``name`` is what logs call it (the class name in snake case
    unless given: ``class HFView(CheckpointCommand, name="hf_view")``); ``broadcast`` says whether
    rank 0 sends it to the other ranks before running it (start-up and shutdown are each
    rank's own: ``broadcast=False``)."""

    broadcast: ClassVar[bool] = True

    def __init_subclass__(cls, *, name: str | None = None, broadcast: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name or re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        cls.broadcast = broadcast


@dataclass(frozen=True)
class Startup(Command, broadcast=False):
    """Build the distributed context and the model-parallel groups."""

@dataclass(frozen=True)
class Shutdown(Command, broadcast=False):
    """Tear the context down (rank 0 first tells the other ranks to do the same)."""

@dataclass(frozen=True)
class Heartbeat(Command):
    """A barrier rank 0 runs when idle, so followers never time out waiting."""

@dataclass(frozen=True)
class CheckpointCommand(Command):
    """A command about the checkpoint at ``path`` (its iteration directory)."""

    path: str


@dataclass(frozen=True)
class ModelCommand(Command):
    """A command about the resident model ``model_id``."""

    model_id: str


@dataclass(frozen=True)
class ModelConfig(CheckpointCommand):
    """The checkpoint's model config and Megatron arguments, as JSON-ready dicts."""

@dataclass(frozen=True)
class HFView(CheckpointCommand, name="hf_view"):
    """The Hugging Face view of a checkpoint and the tokenizer files it ships (rank 0)."""

    dtype: str | None


@dataclass(frozen=True)
class TensorMetadata(CheckpointCommand):
    """Tensor names, global shapes, dtypes and sizes from the checkpoint metadata."""

@dataclass(frozen=True)
class EstimateBytes(CheckpointCommand):
    """The bytes a load of the checkpoint (as ``dtype``) will hold on this rank."""

    dtype: str | None


@dataclass(frozen=True)
class Load(ModelCommand):
    """Build the model from the checkpoint and keep it under ``model_id``."""

    path: str
    model_type: str | None
    dtype: str | None
    mp_overrides: dict[str, Any] | None


@dataclass(frozen=True)
class GatherTensor(ModelCommand):
    """The full tensor ``tensor`` of a model split over ranks (rank 0 receives it)."""

    tensor: str


@dataclass(frozen=True)
class Release(ModelCommand):
    """Drop the model ``model_id`` and free its tensors."""

@dataclass(frozen=True)
class Save(ModelCommand):
    """Save the model ``model_id`` as a Megatron checkpoint at ``path``."""

    path: str
    ckpt_format: str
    hf_tokenizer_path: str | None
    overwrite: bool


@dataclass(frozen=True)
class TokenizerInfo(CheckpointCommand):
    """The checkpoint's tokenizer: type, vocabulary size, special ids."""

@dataclass(frozen=True)
class Tokenize(CheckpointCommand):
    """Token ids of ``text`` with the checkpoint's tokenizer (and the text decoded back)."""

    text: str
    detokenize: bool
