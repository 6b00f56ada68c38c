"""Reading the pickles inside a checkpoint without letting them run code.

A torch_dist checkpoint holds two kinds of pickle:

- ``common.pt`` (a ``torch.save`` archive): read with ``torch.load(weights_only=True)``; the
  only extra globals admitted are those in :data:`COMMON_ALLOWLIST` (``argparse.Namespace``,
  which Megatron-LM stores its arguments in) and ``enum.Enum`` subclasses defined in
  megatron-core (the Namespace carries some, e.g. ``AttnBackend``). Rebuilding an Enum member
  calls ``EnumClass(value)``, which runs no code of the file's choosing.
- ``.metadata`` (plain ``pickle`` of torch.distributed.checkpoint's ``Metadata``): read with a
  restricted unpickler that resolves only the metadata dataclasses listed in
  :data:`METADATA_ALLOWLIST`.

Anything else raises :class:`UnsafeCheckpointError` naming the file and the global, before
any object of the file's choosing is built.
"""

from __future__ import annotations

import enum
import importlib
import io
import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._errors import CorruptCheckpointError, UnsafeCheckpointError
from ._files import COMMON_PT_LIMIT, DCP_METADATA_LIMIT, read_limited
from ._layout import COMMON_FILENAME, DCP_METADATA_FILENAME

__all__ = [
    "load_common_state_dict",
    "load_dcp_metadata",
    "loads_weights_only",
    "load_torch_file",
    "COMMON_ALLOWLIST",
    "METADATA_ALLOWLIST",
]

COMMON_ALLOWLIST: frozenset[str] = frozenset({"argparse.Namespace"})
_ENUM_MODULE_PREFIX = "megatron.core."

_DCP = "torch.distributed.checkpoint"
METADATA_ALLOWLIST: frozenset[tuple[str, str]] = frozenset(
    {
        (f"{_DCP}.metadata", "Metadata"),
        (f"{_DCP}.metadata", "TensorStorageMetadata"),
        (f"{_DCP}.metadata", "BytesStorageMetadata"),
        (f"{_DCP}.metadata", "ChunkStorageMetadata"),
        (f"{_DCP}.metadata", "TensorProperties"),
        (f"{_DCP}.metadata", "MetadataIndex"),
        (f"{_DCP}.metadata", "StorageMeta"),
        (f"{_DCP}.metadata", "_MEM_FORMAT_ENCODING"),
        (f"{_DCP}.filesystem", "_StorageInfo"),
        (f"{_DCP}.planner", "SavePlan"),
        (f"{_DCP}.planner", "WriteItem"),
        (f"{_DCP}.planner", "WriteItemType"),
        (f"{_DCP}.planner", "TensorWriteData"),
        ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"),
        ("megatron.core.dist_checkpointing.strategies.torch", "MCoreSavePlan"),
        ("torch", "Size"),
        # torch >= 2.4 records the checkpoint id (a path) in StorageMeta; rebuilding a path
        # object touches no file.
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
    }
)

# torch.serialization.safe_globals edits one process-wide list; serialize our use of it.
_SAFE_GLOBALS_LOCK = threading.Lock()


def _resolve(qualname: str) -> Any:
    module, _, name = qualname.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _admissible_common_global(qualname: str) -> Any | None:
    """The object for ``qualname`` if our policy admits it, else None. Imports nothing outside
    megatron.core / the stdlib names in the allowlist."""
    if qualname in COMMON_ALLOWLIST:
        return _resolve(qualname)
    if qualname.startswith(_ENUM_MODULE_PREFIX):
        try:
            obj = _resolve(qualname)
        except (ImportError, AttributeError, ValueError):
            return None
        if isinstance(obj, type) and issubclass(obj, enum.Enum):
            return obj
    return None


def _globals_in_archive(source: str | Path | io.BytesIO) -> set[str]:
    """Every global the archive's ``data.pkl`` references (read statically, nothing built)."""
    from torch import _weights_only_unpickler

    with zipfile.ZipFile(source) as archive:
        names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(names) != 1:
            raise CorruptCheckpointError(f"expected one data.pkl in the archive, found {len(names)}")
        data = archive.read(names[0])
    return set(_weights_only_unpickler.get_globals_in_pkl(io.BytesIO(data)))


def loads_weights_only(source: str | Path | io.BytesIO, *, what: str) -> Any:
    """``torch.load(weights_only=True)`` admitting only torch's built-in weights-only types and
    our allowlist.

    Globals that other code added to torch's process-wide safe list (megatron-core adds several
    on import) do not count: every global in the pickle is checked against torch's built-in set
    and our policy before anything is unpickled. ``what`` names the file in error messages.
    Raises UnsafeCheckpointError for anything else, CorruptCheckpointError when unreadable.
    """
    from torch import _weights_only_unpickler

    try:
        referenced = _globals_in_archive(source)
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(f"{what}: {e}", path=what) from e
    except (zipfile.BadZipFile, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError, KeyError) as e:
        raise CorruptCheckpointError(f"{what} is not a readable torch archive: {e}", path=what) from e
    finally:
        if isinstance(source, io.BytesIO):
            source.seek(0)
    builtin = set(_weights_only_unpickler._get_allowed_globals())
    extra = []
    for qualname in sorted(referenced - builtin):
        obj = _admissible_common_global(qualname)
        if obj is None:
            raise UnsafeCheckpointError(
                f"{what} refers to {qualname}, which is not on the allowlist of types a checkpoint "
                f"may contain; refusing to unpickle it",
                path=what,
            )
        extra.append(obj)
    try:
        with _SAFE_GLOBALS_LOCK:
            already = set(map(id, torch.serialization.get_safe_globals()))
            to_add = [g for g in extra if id(g) not in already]
            with torch.serialization.safe_globals(to_add):
                return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refused something the static scan admitted (e.g. a REDUCE on an allowed
        # type); treat as unsafe, never fall back to a full unpickle.
        raise UnsafeCheckpointError(f"{what} cannot be loaded safely: {e}", path=what) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:  # RecursionError too
        raise CorruptCheckpointError(f"{what} cannot be read: {type(e).__name__}: {e}", path=what) from e


def load_torch_file(path: str | Path, *, kind: str = "a torch archive") -> Any:
    """A small ``torch.save`` file of the checkpoint (``common.pt``, per-object ``.pt``
    files): read whole (inside the allowed roots, at most :data:`COMMON_PT_LIMIT` bytes), then
    :func:`loads_weights_only`."""
    data = read_limited(path, COMMON_PT_LIMIT, kind=kind)
    return loads_weights_only(io.BytesIO(data), what=str(path))


def load_common_state_dict(iter_dir: str | Path) -> dict[str, Any]:
    """The non-sharded part of a checkpoint (``common.pt``): version, iteration, ``args``..."""
    path = Path(iter_dir) / COMMON_FILENAME
    if not path.is_file():
        raise CorruptCheckpointError(f"checkpoint {iter_dir} is missing {COMMON_FILENAME}", path=path)
    state = load_torch_file(path, kind=COMMON_FILENAME)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(
            f"{path} should hold a dict, found {type(state).__name__}", path=path
        )
    return state


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, *, what: str) -> None:
        super().__init__(file)
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_ALLOWLIST:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self._what} refers to {module}.{name}, which is not on the allowlist for "
            f"distributed-checkpoint metadata; refusing to unpickle it",
            path=self._what,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self._what} uses persistent ids, which metadata never needs", path=self._what)


def load_dcp_metadata(iter_dir: str | Path):
    """The ``.metadata`` of a torch_dist checkpoint, unpickled through the allowlist."""
    path = Path(iter_dir) / DCP_METADATA_FILENAME
    if not path.exists() and not path.is_symlink():
        raise CorruptCheckpointError(f"checkpoint {iter_dir} is missing {DCP_METADATA_FILENAME}", path=path)
    data = read_limited(path, DCP_METADATA_LIMIT, kind="distributed-checkpoint metadata")
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data), what=str(path)).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            KeyError, MemoryError, RecursionError) as e:
        raise CorruptCheckpointError(f"{path} is not valid checkpoint metadata: {type(e).__name__}: {e}", path=path) from e
    # megatron-core writes MCoreMetadata, a sibling of torch's Metadata with the same fields.
    if not isinstance(getattr(metadata, "state_dict_metadata", None), dict):
        raise CorruptCheckpointError(
            f"{path} should hold torch.distributed.checkpoint Metadata, found {type(metadata).__name__}", path=path
        )
    return metadata
