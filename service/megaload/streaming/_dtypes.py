"""torch dtypes as the safetensors format spells them.

The names are the safetensors file format's (``"F32"``, ``"BF16"``, ``"F8_E4M3"``...). A dtype
missing from this table cannot be written to a safetensors file by this package; the planner
leaves such tensors out and lists them with the reason.
"""

from __future__ import annotations

import torch

__all__ = ["SAFETENSORS_DTYPE_NAMES", "safetensors_dtype_name", "is_castable"]


def _table() -> dict[torch.dtype, str]:
    names: dict[torch.dtype, str] = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
        torch.complex64: "C64",
    }
    # Present in every torch this service supports, but looked up by name so that an older
    # or trimmed build simply lacks the entry instead of failing at import.
    for attr, name in (
        ("uint16", "U16"),
        ("uint32", "U32"),
        ("uint64", "U64"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
        ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
        ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ):
        dtype = getattr(torch, attr, None)
        if isinstance(dtype, torch.dtype):
            names[dtype] = name
    return names


SAFETENSORS_DTYPE_NAMES: dict[torch.dtype, str] = _table()
"""torch dtype -> safetensors dtype name, for every dtype this package can stream."""


def safetensors_dtype_name(dtype: torch.dtype) -> str | None:
    """The safetensors spelling of ``dtype``, or ``None`` when the format has none we write."""
    return SAFETENSORS_DTYPE_NAMES.get(dtype)


def is_castable(dtype: torch.dtype) -> bool:
    """Whether a tensor of ``dtype`` is converted by the ``dtype`` option.

    Only real floating-point tensors are cast (as ``from_pretrained(torch_dtype=...)`` does);
    integer, boolean and complex tensors keep their dtype.
    """
    return dtype.is_floating_point
