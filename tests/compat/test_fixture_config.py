"""load_model_config on the upstream fixtures against the upstream loader's reference config.

``reference_config.json`` holds selected fields of Megatron Bridge's ``load_model_config(iter_dir)[0]``
(``"<missing>"``: the attribute is absent), ``mlm_args.*`` for the returned Namespace, the
config's type name and whether args came back. Our loader must agree from the iteration
directory and from the save directory above it.
"""

from __future__ import annotations

import argparse
import types

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from upstream_fixtures import FIXTURE_NAMES

from megaload.checkpoint import (
    CorruptCheckpointError,
    GPTModelProvider,
    NotACheckpointError,
    load_model_config,
    transformer_config_from_args,
)

MISSING = "<missing>"
# Bridge's provider class lives in megatron.bridge; ours carries the same name and fields.
NOT_COMPARED = {"config_type_module"}


def comparable(value):
    """How the reference writes a value: dtypes as str, functions by name, the rest as is."""
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return value.__name__
    return value


def compare(ref: dict, cfg, args) -> list[str]:
    problems = []
    for key, want in sorted(ref.items()):
        if key in NOT_COMPARED:
            continue
        if key == "config_type":
            # upstream returns the provider class the run config names; we read every Bridge
            # GPT-family provider into our GPTModelProvider and remember which one it was
            got = cfg.source_target.rsplit(".", 1)[1] if isinstance(cfg, GPTModelProvider) else type(cfg).__name__
            present = True
        elif key == "mlm_args_returned":
            got, present = args is not None, True
        elif key.startswith("mlm_args."):
            attr = key.split(".", 1)[1]
            present = args is not None and hasattr(args, attr)
            got = getattr(args, attr, None) if present else None
        else:
            present = hasattr(cfg, key)
            got = getattr(cfg, key, None)
        if want == MISSING:
            if present:
                problems.append(f"{key}: should be absent, is {got!r}")
            continue
        if not present:
            problems.append(f"{key}: absent, reference has {want!r}")
            continue
        got = comparable(got)
        if isinstance(want, bool) and not isinstance(got, bool):
            problems.append(f"{key}: {got!r} is not a bool ({want!r})")
        elif got != want:
            problems.append(f"{key}: {got!r} != reference {want!r}")
    return problems


@pytest.fixture(scope="module")
def loaded_configs():
    """load_model_config for every fixture, from the iteration dir and from the save dir."""
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "fixtures"
    out = {}
    for name in FIXTURE_NAMES:
        save_dir = fixtures / name / "checkpoint"
        iter_dir = next(p for p in save_dir.iterdir() if p.name.startswith("iter_"))
        out[(name, "iter_dir")] = load_model_config(iter_dir)
        out[(name, "save_dir")] = load_model_config(save_dir)
        out[(name, "str")] = load_model_config(str(save_dir))
    return out


@pytest.mark.parametrize("kind", ["iter_dir", "save_dir", "str"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_config_matches_reference(references, loaded_configs, name, kind):
    cfg, args = loaded_configs[(name, kind)]
    problems = compare(references.config(name), cfg, args)
    assert not problems, "\n".join(problems)


def test_reference_fields_are_all_checked(references):
    # guard against a reference file that silently stops covering the fields we rely on
    for name in FIXTURE_NAMES:
        ref = references.config(name)
        assert {"config_type", "mlm_args_returned", "num_layers", "hidden_size", "params_dtype"} <= set(ref)


def test_bridge_config_types(loaded_configs):
    cfg, args = loaded_configs[("bridge_gpt_tied_rope_fp32", "save_dir")]
    assert isinstance(cfg, GPTModelProvider) and isinstance(cfg, TransformerConfig)
    assert args is None
    assert cfg.effective_vocab_size() == 256  # 200 rounded up to a multiple of 128


def test_mlm_config_types(references, loaded_configs):
    cfg, args = loaded_configs[("mlm_gpt", "save_dir")]
    assert type(cfg) is TransformerConfig
    assert f"{type(cfg).__module__}" == references.config("mlm_gpt")["config_type_module"]
    assert isinstance(args, argparse.Namespace)


def _json_form(value):
    # how reference_mlm_args.json writes values: JSON scalars as is, everything else as repr()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def test_mlm_args_namespace_matches_reference_in_full(references, loaded_configs):
    _, args = loaded_configs[("mlm_gpt", "iter_dir")]
    want = references.mlm_args("mlm_gpt")
    got = vars(args)
    assert set(got) == set(want)
    diff = {k: (_json_form(got[k]), want[k]) for k in want if _json_form(got[k]) != want[k]}
    assert not diff, diff


def test_transformer_config_from_args_matches_load(loaded_configs):
    cfg, args = loaded_configs[("mlm_gpt", "iter_dir")]
    again = transformer_config_from_args(args)
    assert type(again) is TransformerConfig
    for field in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                  "normalization", "gated_linear_unit", "add_bias_linear", "layernorm_epsilon", "params_dtype"):
        assert getattr(again, field) == getattr(cfg, field), field
    assert again.activation_func is cfg.activation_func


def test_each_call_returns_a_fresh_object(references):
    save_dir = references.save_dir("mlm_gpt")
    a_cfg, a_args = load_model_config(save_dir)
    b_cfg, b_args = load_model_config(save_dir)
    assert a_cfg is not b_cfg and a_args is not b_args
    a_cfg.num_layers = 7
    a_args.num_layers = 7
    assert b_cfg.num_layers == 2 and b_args.num_layers == 2


# --- what a Megatron-LM common.pt must hold ----------------------------------------------------


def _rewrite_common(save_dir, mutate) -> None:
    common_path = next(save_dir.glob("iter_*/common.pt"))
    common = torch.load(common_path, weights_only=False)  # a copy of a trusted fixture
    mutate(common)
    torch.save(common, common_path)


def test_mlm_without_args_is_not_a_checkpoint_we_can_configure(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    _rewrite_common(save_dir, lambda c: c.pop("args"))
    with pytest.raises(NotACheckpointError) as info:
        load_model_config(save_dir)
    assert "args" in str(info.value) and "run_config.yaml" in str(info.value)
    assert str(save_dir / "iter_0000010") in str(info.value)


def test_mlm_args_of_the_wrong_type_is_corrupt(copy_fixture):
    save_dir = copy_fixture("mlm_gpt")
    _rewrite_common(save_dir, lambda c: c.__setitem__("args", {"num_layers": 2}))
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert "Namespace" in str(info.value)
    assert str(save_dir / "iter_0000010") in str(info.value)
