"""The engine's commands: frozen, picklable values, one class per thing the engine does.

A command names what to do and carries its arguments; :mod:`megaload.engine._handlers`
holds what each does. Under torchrun rank 0 broadcasts the command object itself and every
rank runs the same handler, so a command carries only plain values (strings, numbers,
dicts of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Command",
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
    """Base of every command. ``name`` is what logs and ``/v1/info`` call it; ``broadcast``
    says whether rank 0 sends it to the other ranks before running it (start-up and
    shutdown are each rank's own)."""

    name: ClassVar[str] = "command"
    broadcast: ClassVar[bool] = True


@dataclass(frozen=True)
class Startup(Command):
    """Build the distributed context and the model-parallel groups."""

    name: ClassVar[str] = "startup"
    broadcast: ClassVar[bool] = False


@dataclass(frozen=True)
class Shutdown(Command):
    """Tear the context down (rank 0 first tells the other ranks to do the same)."""

    name: ClassVar[str] = "shutdown"
    broadcast: ClassVar[bool] = False


@dataclass(frozen=True)
class Heartbeat(Command):
    """A barrier rank 0 runs when idle, so followers never time out waiting."""

    name: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class ModelConfig(Command):
    """The checkpoint's model config and Megatron arguments, as JSON-ready dicts."""

    name: ClassVar[str] = "model_config"
    path: str


@dataclass(frozen=True)
class HFView(Command):
    """The Hugging Face view of a checkpoint and the tokenizer files it ships (rank 0)."""

    name: ClassVar[str] = "hf_view"
    path: str
    dtype: str | None


@dataclass(frozen=True)
class TensorMetadata(Command):
    """Tensor names, global shapes, dtypes and sizes from the checkpoint metadata."""

    name: ClassVar[str] = "tensor_metadata"
    path: str


@dataclass(frozen=True)
class EstimateBytes(Command):
    """The bytes a load of the checkpoint (as ``dtype``) will hold on this rank."""

    name: ClassVar[str] = "estimate_bytes"
    path: str
    dtype: str | None


@dataclass(frozen=True)
class Load(Command):
    """Build the model from the checkpoint and keep it under ``model_id``."""

    name: ClassVar[str] = "load"
    model_id: str
    path: str
    model_type: str | None
    dtype: str | None
    mp_overrides: dict[str, Any] | None


@dataclass(frozen=True)
class GatherTensor(Command):
    """The full tensor ``name`` of a model split over ranks (rank 0 receives it)."""

    name: ClassVar[str] = "gather_tensor"
    model_id: str
    tensor: str


@dataclass(frozen=True)
class Release(Command):
    """Drop the model ``model_id`` and free its tensors."""

    name: ClassVar[str] = "release"
    model_id: str


@dataclass(frozen=True)
class Save(Command):
    """Save the model ``model_id`` as a Megatron checkpoint at ``path``."""

    name: ClassVar[str] = "save"
    model_id: str
    path: str
    ckpt_format: str
    hf_tokenizer_path: str | None
    overwrite: bool


@dataclass(frozen=True)
class TokenizerInfo(Command):
    """The checkpoint's tokenizer: type, vocabulary size, special ids."""

    name: ClassVar[str] = "tokenizer_info"
    path: str


@dataclass(frozen=True)
class Tokenize(Command):
    """Token ids of ``text`` with the checkpoint's tokenizer (and the text decoded back)."""

    name: ClassVar[str] = "tokenize"
    path: str
    text: str
    detokenize: bool
