"""dtype spellings: dtype_from_str, parse_dtype, dtype_from_hf, torch_dtype_from_mcore_config."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from megaload.checkpoint import (
    CheckpointError,
    InvalidDtypeError,
    dtype_from_hf,
    dtype_from_str,
    parse_dtype,
    torch_dtype_from_mcore_config,
)

# The spellings the issue lists, with the dtype each one means (Megatron/Lightning/HF usage).
SPELLINGS = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "16": torch.float16,
    "16-mixed": torch.float16,
    "fp16-mixed": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "32": torch.float32,
    "32-true": torch.float32,
}


def _cases(spelling: str) -> list[str]:
    return sorted({spelling, spelling.upper(), spelling.title(), spelling.swapcase(), spelling.capitalize()})


CASED = [(variant, dtype) for spelling, dtype in SPELLINGS.items() for variant in _cases(spelling)]


@pytest.mark.parametrize(("spelling", "expected"), CASED)
def test_dtype_from_str_every_spelling_any_case(spelling, expected, caplog):
    with caplog.at_level(logging.WARNING):
        assert dtype_from_str(spelling) is expected
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a known spelling must not warn"


@pytest.mark.parametrize(("spelling", "expected"), CASED)
def test_parse_dtype_every_spelling_any_case(spelling, expected):
    assert parse_dtype(spelling) is expected


def test_surrounding_whitespace_is_ignored():
    assert dtype_from_str(" bf16\n") is torch.bfloat16
    assert parse_dtype("\tfp16 ") is torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8])
def test_torch_dtype_passes_through(dtype):
    assert dtype_from_str(dtype) is dtype
    assert parse_dtype(dtype) is dtype


@pytest.mark.parametrize("spelling", ["fp8", "bf17", "int8", "", "mixed", "16-bf"])
def test_dtype_from_str_unknown_gives_float32_with_warning(spelling, caplog):
    with caplog.at_level(logging.WARNING, logger="megaload.checkpoint"):
        assert dtype_from_str(spelling) is torch.float32
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert repr(spelling) in warnings[0].getMessage()


@pytest.mark.parametrize("value", [None, 16, 1.0, b"bf16", ["bf16"]])
def test_dtype_from_str_non_string_is_type_error(value):
    with pytest.raises(TypeError):
        dtype_from_str(value)


@pytest.mark.parametrize("spelling", ["bf17", "fp8", "torch.float8", "", "sixteen"])
def test_parse_dtype_unknown_is_invalid_dtype_error_naming_value(spelling):
    with pytest.raises(InvalidDtypeError) as info:
        parse_dtype(spelling)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, CheckpointError)
    assert err.value == spelling
    assert repr(spelling) in str(err)
    # the message helps: it lists spellings that would have worked
    assert "bf16" in str(err)


@pytest.mark.parametrize("value", [None, 16, 2.5])
def test_parse_dtype_non_string_is_invalid_dtype_error(value):
    with pytest.raises(InvalidDtypeError) as info:
        parse_dtype(value)
    assert type(value).__name__ in str(info.value)


# --- dtype_from_hf -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32), ("BF16", torch.bfloat16)],
)
def test_dtype_from_hf_torch_dtype_string(value, expected):
    assert dtype_from_hf(SimpleNamespace(torch_dtype=value)) is expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dtype_from_hf_torch_dtype_object(dtype):
    assert dtype_from_hf(SimpleNamespace(torch_dtype=dtype)) is dtype


def test_dtype_from_hf_transformers5_dtype_attribute():
    # transformers 5 configs carry `dtype`; `torch_dtype` may be absent altogether
    assert dtype_from_hf(SimpleNamespace(dtype="bfloat16")) is torch.bfloat16
    assert dtype_from_hf(SimpleNamespace(dtype=torch.float16)) is torch.float16


def test_dtype_from_hf_prefers_a_set_value_over_none():
    assert dtype_from_hf(SimpleNamespace(torch_dtype=None, dtype="float16")) is torch.float16


def test_dtype_from_hf_real_pretrained_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(dtype=torch.bfloat16)
    assert dtype_from_hf(cfg) is torch.bfloat16
    cfg = transformers.GPT2Config.from_dict({"torch_dtype": "float16"})
    assert dtype_from_hf(cfg) is torch.float16
    # a config read from an old config.json may hold the dtype as a string
    cfg = transformers.GPT2Config()
    cfg.dtype = "bfloat16"
    assert dtype_from_hf(cfg) is torch.bfloat16


@pytest.mark.parametrize("value", ["float8_e4m3", "bf17", "not-a-dtype"])
def test_dtype_from_hf_unrecognized_string_is_value_error(value):
    with pytest.raises(ValueError) as info:
        dtype_from_hf(SimpleNamespace(torch_dtype=value))
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [16, 2.0, ["bf16"]])
def test_dtype_from_hf_wrong_type_is_value_error(value):
    with pytest.raises(ValueError):
        dtype_from_hf(SimpleNamespace(torch_dtype=value))


def test_dtype_from_hf_absent_is_attribute_error():
    with pytest.raises(AttributeError):
        dtype_from_hf(object())
    with pytest.raises(AttributeError):
        dtype_from_hf(SimpleNamespace(hidden_size=8))


# --- torch_dtype_from_mcore_config -------------------------------------------------------------


def _mcore_config(**kw):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, **kw)


def test_torch_dtype_from_mcore_config_flags():
    assert torch_dtype_from_mcore_config(_mcore_config(bf16=True)) is torch.bfloat16
    assert torch_dtype_from_mcore_config(_mcore_config(fp16=True)) is torch.float16
    assert torch_dtype_from_mcore_config(_mcore_config()) is torch.float32


def test_torch_dtype_from_mcore_config_ignores_params_dtype():
    # the flags decide, as in the reference: params_dtype alone does not make a bf16 model
    assert torch_dtype_from_mcore_config(_mcore_config(params_dtype=torch.bfloat16)) is torch.float32


def test_torch_dtype_from_mcore_config_plain_objects():
    assert torch_dtype_from_mcore_config(SimpleNamespace(bf16=True, fp16=False)) is torch.bfloat16
    assert torch_dtype_from_mcore_config(SimpleNamespace(bf16=False, fp16=True)) is torch.float16
    assert torch_dtype_from_mcore_config(SimpleNamespace()) is torch.float32


def test_the_wire_schema_lists_exactly_the_spellings_the_service_accepts():
    from megaload.checkpoint._dtypes import DTYPE_SPELLINGS
    from megaload_client.types import DTYPE_NAMES

    assert sorted(DTYPE_NAMES) == sorted(DTYPE_SPELLINGS) and len(set(DTYPE_NAMES)) == len(DTYPE_NAMES)
