"""Turn config objects (dataclasses, Namespaces) into JSON-representable dictionaries.

Megatron configs hold dtypes, enums, callables and nested objects; a response carries their
readable form: dtypes as ``"float32"``, enums by name, callables as ``module.qualname``,
anything else unknown as a short ``repr``. Non-finite floats become strings.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from typing import Any

__all__ = ["to_jsonable", "object_fields"]

_MAX_DEPTH = 4
_MAX_REPR = 200
_MAX_ITEMS = 1000


def object_fields(obj: Any) -> dict[str, Any]:
    """Public attributes of a dataclass instance, a Namespace or a plain object, in order."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        return {n: getattr(obj, n, None) for n in names if not n.startswith("_")}
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-representable rendering of ``value`` (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, enum.Enum):
            return value.name
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    type_name = f"{type(value).__module__}.{type(value).__qualname__}"
    if type_name == "torch.dtype":
        return str(value).removeprefix("torch.")
    if type_name == "torch.device":
        return str(value)
    if _depth >= _MAX_DEPTH:
        return _short_repr(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, _depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v, _depth + 1) for v in list(items)[:_MAX_ITEMS]]
    if isinstance(value, type) or callable(value):
        module = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        if qualname:
            return f"{module}.{qualname}" if module else qualname
        return _short_repr(value)
    if dataclasses.is_dataclass(value) or type(value).__name__ == "Namespace":
        return {k: to_jsonable(v, _depth + 1) for k, v in object_fields(value).items()}
    return _short_repr(value)


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not fail the response
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."
