"""dtype spellings used across Megatron, Lightning and Hugging Face."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ._errors import InvalidDtypeError, summarize

__all__ = ["dtype_from_str", "parse_dtype", "dtype_from_hf", "torch_dtype_from_mcore_config", "DTYPE_SPELLINGS"]

logger = logging.getLogger(__name__)

# Lower-cased spelling -> dtype. Precision flags ("16-mixed", "bf16-true") name the compute dtype.
DTYPE_SPELLINGS: dict[str, torch.dtype] = {
    **dict.fromkeys(
        ("fp16", "float16", "half", "16", "16-mixed", "fp16-mixed", "16-true", "fp16-true", "torch.float16"),
        torch.float16,
    ),
    **dict.fromkeys(
        ("bf16", "bfloat16", "bf16-mixed", "bf16-true", "torch.bfloat16"),
        torch.bfloat16,
    ),
    **dict.fromkeys(
        ("fp32", "float32", "float", "32", "32-true", "fp32-true", "torch.float32"),
        torch.float32,
    ),
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Strict form of :func:`dtype_from_str`: unknown spellings raise :class:`InvalidDtypeError`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise InvalidDtypeError(f"dtype must be a string or torch.dtype, got {type(dtype).__name__}", value=dtype)
    found = DTYPE_SPELLINGS.get(dtype.strip().lower())
    if found is None:
        known = ", ".join(sorted(DTYPE_SPELLINGS))
        raise InvalidDtypeError(f"unknown dtype {summarize(dtype)}; known spellings: {known}", value=dtype)
    return found


def dtype_from_str(dtype: str | torch.dtype) -> torch.dtype:
    """Convert a dtype spelling (``"bf16"``, ``"16-mixed"``, ``"float32"``...) to a torch dtype.

    A ``torch.dtype`` passes through. Unrecognized strings give ``torch.float32`` (as Megatron
    Bridge does) and log a warning; use :func:`parse_dtype` to reject them instead.
    Non-string input raises ``TypeError``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"Expected str or torch.dtype, got {type(dtype).__name__}")
    try:
        return parse_dtype(dtype)
    except InvalidDtypeError:
        logger.warning("unrecognized dtype %s; using torch.float32", summarize(dtype))
        return torch.float32


def dtype_from_hf(config: Any) -> torch.dtype:
    """The dtype of a Hugging Face config: ``torch_dtype``, or ``dtype`` (transformers 5).

    Raises ``AttributeError`` when the config has neither attribute and ``ValueError`` when the
    value is neither a recognized string nor a ``torch.dtype`` (``None`` included, as upstream).
    """
    present = [attr for attr in ("torch_dtype", "dtype") if hasattr(config, attr)]
    if not present:
        raise AttributeError(f"{type(config).__name__} has neither `torch_dtype` nor `dtype`")
    value = next((getattr(config, attr) for attr in present if getattr(config, attr) is not None), None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        try:
            return parse_dtype(value)
        except InvalidDtypeError as e:
            raise ValueError(f"unrecognized dtype {summarize(value)} in Hugging Face config") from e
    raise ValueError(f"torch_dtype must be a str or torch.dtype, got {type(value).__name__}")


def torch_dtype_from_mcore_config(config: Any) -> torch.dtype:
    """bfloat16 if ``config.bf16``, float16 if ``config.fp16``, else float32."""
    if getattr(config, "bf16", False):
        return torch.bfloat16
    if getattr(config, "fp16", False):
        return torch.float16
    return torch.float32
