"""The names of a model's extra state: what ``state_dict()`` lists that is not a weight."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["extra_state_names", "EXTRA_STATE"]

EXTRA_STATE = "_extra_state"


def extra_state_names(chunks: Any) -> list[str]:
    """The ``_extra_state`` keys ``state_dict()`` gives for ``chunks`` (a module or a list of
    virtual-pipeline chunks), flattened as :func:`megaload.checkpoint.model_state_dict` keys
    them, found from the module tree alone: torch adds the key for every module whose class
    overrides ``get_extra_state``, so nothing is serialized to learn the names."""
    if chunks is None:
        return []
    if isinstance(chunks, torch.nn.Module):
        chunks = [chunks]
    names: list[str] = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, torch.nn.Module):
            continue
        prefix = "model." if len(chunks) == 1 else f"model{i}."
        for path, module in chunk.named_modules(remove_duplicate=False):
            if type(module).get_extra_state is not torch.nn.Module.get_extra_state:
                names.append(f"{prefix}{path}.{EXTRA_STATE}" if path else f"{prefix}{EXTRA_STATE}")
    return names
