"""Reading a checkpoint's weights into a built model: :func:`load_weights`.

The sharded state dict of the model is prepared for an in-place read (``_inplace``), its
parameters advised for huge pages (``_huge_pages``), then read by ``_reader.load_checkpoint``
(megatron-core's ``dist_checkpointing.load`` with the allowlisted strategies); what fails there
becomes one typed error naming the checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import CheckpointError, CorruptCheckpointError
from ._extra_state import EXTRA_STATE
from ._huge_pages import advise_huge_pages, huge_pages_enabled
from ._inplace import prepare_sharded_state_dict
from ._layout import inspect_layout
from ._pickle import load_common_state_dict
from ._reader import load_checkpoint, read_tensor_metadata

__all__ = ["load_weights"]



def _drop_extra_state(state: dict[str, Any]) -> None:
    for key in [k for k in state if k.startswith("model")]:
        sub = state[key]
        if isinstance(sub, dict):
            for name in [n for n in sub if EXTRA_STATE in n]:
                del sub[name]


def load_weights(model: list, checkpoint_path: str | os.PathLike, *, return_state_dict: bool = False):
    """Read the checkpoint's weights into ``model`` (or return them as a state dict)."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    iter_dir = inspect_layout(checkpoint_path).iteration_dir
    common = load_common_state_dict(iter_dir)
    metadata = common.get("content_metadata")
    if len(model) == 1:
        sharded = {"model": model[0].sharded_state_dict(metadata=metadata)}
    else:
        sharded = {f"model{i}": m.sharded_state_dict(metadata=metadata) for i, m in enumerate(model)}
    prepare_sharded_state_dict(sharded, {name: meta.shape for name, meta in read_tensor_metadata(iter_dir).items()})
    if huge_pages_enabled():
        advise_huge_pages(p for chunk in model for p in chunk.parameters())
    try:
        state = load_checkpoint(sharded, str(iter_dir), strict="assume_ok_unexpected")
    except CheckpointError:
        raise
    except CheckpointException as e:  # a BaseException: catch it explicitly
        inner = _first_failure(e)
        if isinstance(inner, CheckpointError):
            raise inner from e
        raise CorruptCheckpointError(f"reading {iter_dir} failed: {type(inner).__name__}: {inner}", path=iter_dir) from e
    except (CheckpointingException, RuntimeError, ValueError, KeyError, OSError, EOFError, AssertionError,
            TypeError) as e:
        raise CorruptCheckpointError(f"reading {iter_dir} failed: {type(e).__name__}: {e}", path=iter_dir) from e
    _drop_extra_state(state)
    if return_state_dict:
        return state
    for i, chunk in enumerate(model):
        key = "model" if len(model) == 1 else f"model{i}"
        if key not in state:
            continue
        result = chunk.load_state_dict(state[key], strict=False)
        missing = [k for k in result.missing_keys if EXTRA_STATE not in k]
        if missing or result.unexpected_keys:
            raise CorruptCheckpointError(
                f"{iter_dir}: weights do not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}",
                path=iter_dir,
            )
    return None


def _first_failure(exc: BaseException) -> BaseException:
    """The first rank's underlying error inside a DCP CheckpointException (the exception
    itself when it carries none), following ``__cause__`` to our own error where there is one."""
    failures = getattr(exc, "failures", None)
    inner: BaseException = exc
    if isinstance(failures, dict) and failures:
        err = next(iter(failures.values()))
        inner = err[0] if isinstance(err, tuple) else err
    seen = inner
    while seen is not None:
        if isinstance(seen, CheckpointError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return inner
