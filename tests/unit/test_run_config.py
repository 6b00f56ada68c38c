"""Megatron Bridge ``run_config.yaml``: read without instantiating anything, refuse what cannot
be honoured, and write what reads back to the same provider."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from megaload.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    GPTModelProvider,
    IncompatibleConfigError,
    UnsupportedCheckpointError,
    load_model_config,
)
from megaload.checkpoint._run_config import provider_from_run_config, read_run_config, run_config_for_provider

FIXTURE = "bridge_gpt_tied_rope_fp32"
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_RUN_CONFIG = FIXTURES_DIR / FIXTURE / "checkpoint" / "iter_0000000" / "run_config.yaml"
LOGGER = "megaload.checkpoint"


def fixture_run_config() -> dict:
    return yaml.safe_load(FIXTURE_RUN_CONFIG.read_text())


@pytest.fixture
def bridge_copy(copy_fixture):
    """A writable copy of the Bridge fixture: (save_dir, run_config.yaml path)."""
    save_dir = copy_fixture(FIXTURE)
    return save_dir, save_dir / "iter_0000000" / "run_config.yaml"


def write(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def with_model(**changes) -> dict:
    rc = fixture_run_config()
    for key, value in changes.items():
        if value is _DELETE:
            del rc["model"][key]
        else:
            rc["model"][key] = value
    return rc


_DELETE = object()


def shell(marker: Path, **extra) -> dict:
    return {"_target_": "os.system", "_args_": [f"touch '{marker}'"], **extra}


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a _target_ from the YAML was called"


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- unreadable files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["model: [unclosed", "model:\n  a: 1\n b: 2\n", "\tmodel: 1", "model: {a: 1", "key: 'unterminated"],
)
def test_garbage_yaml_is_corrupt(bridge_copy, text):
    save_dir, rc_path = bridge_copy
    rc_path.write_text(text)
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)
    assert info.value.path == str(rc_path)


def test_python_tags_are_not_constructed(bridge_copy, marker):
    save_dir, rc_path = bridge_copy
    rc_path.write_text(f"model: !!python/object/apply:os.system [\"touch '{marker}'\"]\n")
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)


def test_non_utf8_is_corrupt(bridge_copy):
    save_dir, rc_path = bridge_copy
    rc_path.write_bytes(b"model:\n  vocab_size: \xff\xfe\n")
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just a string\n", "", "null\n"])
def test_non_mapping_is_corrupt(bridge_copy, text):
    save_dir, rc_path = bridge_copy
    rc_path.write_text(text)
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)


def test_oversized_run_config_is_refused(bridge_copy):
    save_dir, rc_path = bridge_copy
    with open(rc_path, "a") as f:
        f.write("# " + "x" * (17 * 1024 * 1024) + "\n")
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)


@pytest.mark.parametrize("model", [_DELETE, None, 3, ["a"], "model"])
def test_missing_or_non_mapping_model_section(bridge_copy, model):
    save_dir, rc_path = bridge_copy
    rc = fixture_run_config()
    if model is _DELETE:
        del rc["model"]
    else:
        rc["model"] = model
    write(rc_path, rc)
    with pytest.raises(CorruptCheckpointError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)
    assert "model" in str(info.value)


# --- _target_ markers ---------------------------------------------------------------------------


ESSENTIAL = ["activation_func", "params_dtype", "transformer_layer_spec", "pipeline_dtype", "autocast_dtype"]


@pytest.mark.parametrize("field", ESSENTIAL)
@pytest.mark.parametrize(
    "value",
    [
        {"_target_": "torch.nn.functional.not_a_function", "_call_": False},
        {"_target_": "megatron.bridge.models.gpt_provider.some_future_spec", "_call_": False},
        {"_target_": "torch.float8_e4m3fn", "_call_": False},
        {"_target_": 5},
    ],
    ids=["unknown-fn", "unknown-spec", "unknown-dtype", "non-string-target"],
)
def test_unknown_target_on_essential_field_is_unsupported(bridge_copy, field, value):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(**{field: value}))
    with pytest.raises(UnsupportedCheckpointError) as info:
        load_model_config(save_dir)
    assert f"model.{field}" in str(info.value)
    assert str(rc_path) in str(info.value)


@pytest.mark.parametrize("field", ["init_method", "output_layer_init_method", "embedding_init_method"])
def test_unknown_target_on_init_method_warns_and_uses_default(bridge_copy, caplog, field):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(**{field: {"_target_": "my_lab.inits.fancy_init", "_partial_": True, "std": 0.5}}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg, _ = load_model_config(save_dir)
    assert any(f"model.{field}" in m and "my_lab.inits.fancy_init" in m for m in warnings_of(caplog))
    # the default megatron-core gives a config without that field set
    write(rc_path, with_model(**{field: _DELETE}))
    default, _ = load_model_config(save_dir)
    got, want = getattr(cfg, field), getattr(default, field)
    assert callable(got)
    assert callable_identity(got) == callable_identity(want)


def test_runtime_field_with_a_plain_value_warns_and_uses_default(bridge_copy, caplog):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(init_method="normal"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg, _ = load_model_config(save_dir)
    assert callable(cfg.init_method)
    assert any("model.init_method" in m for m in warnings_of(caplog))


def test_undecodable_enum_on_a_non_essential_field_warns(bridge_copy, caplog):
    save_dir, rc_path = bridge_copy
    bad = {"_target_": "megatron.core.transformer.enums.AttnBackend", "_call_": True, "_args_": [999]}
    write(rc_path, with_model(attention_backend=bad))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg, _ = load_model_config(save_dir)
    from megatron.core.transformer.enums import AttnBackend

    assert cfg.attention_backend is AttnBackend.auto
    assert any("model.attention_backend" in m for m in warnings_of(caplog))


@pytest.mark.parametrize("field", ["activation_func", "params_dtype", "transformer_layer_spec"])
@pytest.mark.parametrize("call", [True, False])
def test_dangerous_target_on_essential_field_is_refused_not_called(bridge_copy, marker, field, call):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(**{field: shell(marker, _call_=call)}))
    with pytest.raises(UnsupportedCheckpointError) as info:
        load_model_config(save_dir)
    assert f"model.{field}" in str(info.value)
    assert "os.system" in str(info.value)


@pytest.mark.parametrize(
    "target", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call", "pathlib.Path.touch"]
)
def test_dangerous_target_on_init_method_is_ignored_not_called(bridge_copy, marker, caplog, target):
    save_dir, rc_path = bridge_copy
    code = f"touch '{marker}'" if target in ("os.system", "subprocess.call") else str(marker)
    if target.startswith("builtins."):
        code = f"open({str(marker)!r}, 'w').close()"
    node = {"_target_": target, "_args_": [code], "_partial_": False}
    write(rc_path, with_model(init_method=node, output_layer_init_method={**node, "_partial_": True}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg, _ = load_model_config(save_dir)
    assert cfg.init_method is not None
    for fn in (cfg.init_method, cfg.output_layer_init_method):
        assert callable_identity(fn)[1] != target
    assert any(target in m for m in warnings_of(caplog))


def test_dangerous_targets_anywhere_else_are_never_called(bridge_copy, marker, caplog):
    save_dir, rc_path = bridge_copy
    rc = with_model(
        _target_="os.system",  # the provider class itself
        evil_field=shell(marker),  # a field we do not know
        recompute_modules=[shell(marker)],  # a marker nested in a list
    )
    rc["_target_"] = "os.system"
    rc["tokenizer"] = shell(marker)
    rc["checkpoint"]["evil"] = shell(marker)
    write(rc_path, rc)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        try:
            cfg, _ = load_model_config(save_dir)
        except CheckpointError:
            pass  # refusing is as good as ignoring; calling is not
        else:
            assert isinstance(cfg, GPTModelProvider)
            assert not hasattr(cfg, "evil_field")


def test_unknown_model_fields_warn_listing_them(bridge_copy, caplog):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(zz_future_knob=3, aa_other_knob={"x": 1}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg, _ = load_model_config(save_dir)
    assert not hasattr(cfg, "zz_future_knob")
    matching = [m for m in warnings_of(caplog) if "zz_future_knob" in m]
    assert len(matching) == 1
    assert "aa_other_knob" in matching[0]
    assert str(rc_path) in matching[0]


@pytest.mark.parametrize(
    "target",
    [
        "megatron.bridge.models.mamba.mamba_provider.MambaModelProvider",
        "megatron.bridge.models.nemotronh.NemotronHModelProvider4B_Hybrid",
        "megatron.bridge.models.t5_provider.T5ModelProvider",
        "megatron.bridge.models.qwen_vl.Qwen25VLModelProvider",
    ],
)
def test_non_gpt_providers_are_unsupported(bridge_copy, target):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(_target_=target))
    with pytest.raises(UnsupportedCheckpointError) as info:
        load_model_config(save_dir)
    assert target in str(info.value)
    assert str(rc_path) in str(info.value)


def test_gpt_family_provider_is_read_as_gpt(bridge_copy):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(_target_="megatron.bridge.models.llama.llama_provider.Llama3ModelProvider"))
    cfg, args = load_model_config(save_dir)
    assert isinstance(cfg, GPTModelProvider) and args is None
    assert cfg.vocab_size == 200


@pytest.mark.parametrize("value", [_DELETE, None])
def test_missing_vocab_size_is_incompatible(bridge_copy, value):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(vocab_size=value))
    with pytest.raises(IncompatibleConfigError) as info:
        load_model_config(save_dir)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "vocab_size"
    assert "vocab_size" in str(info.value)
    assert str(rc_path) in str(info.value)


def test_contradictory_fields_are_incompatible(bridge_copy):
    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(fp16=True, bf16=True))
    with pytest.raises(IncompatibleConfigError) as info:
        load_model_config(save_dir)
    assert str(rc_path) in str(info.value)


def test_read_run_config_returns_the_mapping():
    data = read_run_config(FIXTURE_RUN_CONFIG)
    assert data == fixture_run_config()
    assert data["model"]["_target_"] == "megatron.bridge.models.gpt_provider.GPTModelProvider"


def test_each_load_returns_a_fresh_config():
    a, _ = load_model_config(FIXTURES_DIR / FIXTURE / "checkpoint")
    b, _ = load_model_config(FIXTURES_DIR / FIXTURE / "checkpoint")
    assert a is not b
    a.num_layers = 99
    assert b.num_layers == 2


# --- writing: run_config_for_provider ----------------------------------------------------------


def callable_identity(value):
    """What makes two config callables the same: the function, and for partials their arguments."""
    if isinstance(value, functools.partial):
        return ("partial", callable_identity(value.func), value.args, tuple(sorted(value.keywords.items())))
    if callable(value):
        return ("fn", f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}", value)
    return ("value", value)


def assert_same_provider(a: GPTModelProvider, b: GPTModelProvider) -> None:
    assert type(a) is type(b)
    mismatched = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if callable(x) and not isinstance(x, type) or callable(y) and not isinstance(y, type):
            same = callable_identity(x) == callable_identity(y)
        else:
            same = type(x) is type(y) and x == y
        if not same:
            mismatched.append((f.name, x, y))
    assert not mismatched, mismatched


def round_trip(provider: GPTModelProvider) -> GPTModelProvider:
    rc = run_config_for_provider(provider, None, save_dir="/ckpts/run")
    text = yaml.safe_dump(rc, sort_keys=False)  # plain YAML: safe_dump refuses Python objects
    back = yaml.safe_load(text)
    assert back["model"]["_target_"] == "megatron.bridge.models.gpt_provider.GPTModelProvider"
    assert back["checkpoint"]["ckpt_format"] == "torch_dist"
    assert back["checkpoint"]["save"] == "/ckpts/run"
    assert back["tokenizer"] is None
    return provider_from_run_config(back, path="run_config.yaml")


def test_round_trip_of_the_fixture_provider():
    provider, _ = load_model_config(FIXTURES_DIR / FIXTURE / "checkpoint")
    again = round_trip(provider)
    assert_same_provider(provider, again)
    assert again.activation_func is F.gelu
    assert again.params_dtype is torch.float32
    assert again.transformer_layer_spec == "local_layer_spec"


def _small(**kw) -> GPTModelProvider:
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=100, seq_length=32)
    base.update(kw)
    return GPTModelProvider(**base)


def test_round_trip_of_a_varied_provider():
    from megatron.core.transformer.enums import AttnBackend

    provider = _small(
        bf16=True,
        params_dtype=torch.bfloat16,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        num_query_groups=2,
        add_bias_linear=False,
        qk_layernorm=True,
        position_embedding_type="rope",
        rotary_base=500000,
        rotary_percent=0.5,
        share_embeddings_and_output_weights=False,
        should_pad_vocab=True,
        make_vocab_size_divisible_by=64,
        layernorm_epsilon=1e-6,
        attention_backend=AttnBackend.local,
        init_method_std=0.006,
        hidden_dropout=0.0,
        seq_len_interpolation_factor=2.0,
        transformer_layer_spec="transformer_engine_layer_spec",
    )
    again = round_trip(provider)
    assert_same_provider(provider, again)
    assert again.params_dtype is torch.bfloat16 and again.bf16


def _activations():
    from megatron.core import activations
    from megatron.core.transformer import utils as tutils

    return {
        "gelu": F.gelu,
        "silu": F.silu,
        "relu": F.relu,
        "squared_relu": activations.squared_relu,
        "quick_gelu": activations.quick_gelu,
        "fast_gelu": activations.fast_gelu,
        "openai_gelu": tutils.openai_gelu,
        "erf_gelu": tutils.erf_gelu,
        "tanh": torch.tanh,
    }


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in ["gelu", "silu", "relu", "squared_relu", "quick_gelu", "fast_gelu", "openai_gelu", "erf_gelu", "tanh"]
    ],
)
def test_round_trip_of_each_activation(name):
    fn = _activations()[name]
    again = round_trip(_small(activation_func=fn))
    assert again.activation_func is fn


# --- field values that cannot build a model -----------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position_embedding_type", "alibi"),
        ("vocab_size", -5),
        ("num_layers", 3),  # builds, but the weights on disk have 2 layers
        ("ffn_hidden_size", 100),
        ("num_query_groups", 2),
        ("num_layers", "two"),
        ("hidden_size", -1),
        ("num_attention_heads", 0),
        ("vocab_size", "many"),
        ("normalization", "BatchNorm"),
    ],
)
def test_unbuildable_field_values_give_a_typed_error(bridge_copy, field, value):
    from megaload.checkpoint import load_megatron_model

    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(**{field: value}))
    with pytest.raises(CheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    if isinstance(info.value, IncompatibleConfigError):
        assert info.value.field == field
        assert field in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("position_embedding_type", "alibi"),
        ("vocab_size", -5),
        ("num_layers", 3),
        ("ffn_hidden_size", 100),
    ],
)
def test_unbuildable_field_value_errors_name_the_checkpoint(bridge_copy, field, value):
    from megaload.checkpoint import load_megatron_model

    save_dir, rc_path = bridge_copy
    write(rc_path, with_model(**{field: value}))
    with pytest.raises(CheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    assert str(save_dir / "iter_0000000") in str(info.value)


# --- what real run configs carry: the run config of an upstream AutoBridge import ---------------
# (hf_qwen2: bf16, float rotary_base, nulls for derived sizes, lists, nested _target_ objects).

HF_IMPORT = "hf_qwen2"


def hf_import_run_config() -> dict:
    return yaml.safe_load((FIXTURES_DIR / HF_IMPORT / "checkpoint" / "iter_0000000" / "run_config.yaml").read_text())


@pytest.fixture
def hf_import_copy(copy_fixture):
    save_dir = copy_fixture(HF_IMPORT)
    return save_dir, save_dir / "iter_0000000" / "run_config.yaml"


def load_with(hf_import_copy, **changes):
    save_dir, rc_path = hf_import_copy
    rc = hf_import_run_config()
    rc["model"].update(changes)
    write(rc_path, rc)
    return load_model_config(save_dir)[0]


def test_the_hf_import_run_config_is_read_as_upstream_reads_it(hf_import_copy):
    cfg, args = load_model_config(hf_import_copy[0])
    assert args is None
    assert cfg.rotary_base == 1000000.0 and isinstance(cfg.rotary_base, float)  # an int field's default
    assert cfg.params_dtype is torch.bfloat16 and cfg.autocast_dtype is torch.bfloat16  # nested _target_ dtypes
    assert cfg.activation_func is F.silu  # a nested _target_ naming a function
    assert cfg.cuda_graph_scope == [] and cfg.moe_layer_freq == 1  # a list, an int-or-list field
    assert cfg.pipeline_dtype is None and cfg.hierarchical_context_parallel_sizes is None  # None where defaults differ


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rotary_base", 500000.0, 500000.0),  # float where the default is int
        ("rotary_base", 10000, 10000),
        ("rope_scaling_factor", 8, 8),  # int where the default is float
        ("layernorm_epsilon", 1e-5, 1e-5),
        ("kv_channels", None, 16),  # None: megatron-core derives it (hidden / heads)
        ("num_query_groups", None, 4),  # None: one group per head
        ("ffn_hidden_size", None, 256),  # None: 4 * hidden
        ("window_size", [128, 0], [128, 0]),  # a list
        ("moe_layer_freq", [1, 1], [1, 1]),
        ("qk_layernorm", 0, False),  # 0/1 read as the flags they mean
        ("seq_len_interpolation_factor", None, None),
    ],
)
def test_values_upstream_accepts_are_accepted(hf_import_copy, field, value, expected):
    cfg = load_with(hf_import_copy, **{field: value})
    got = getattr(cfg, field)
    assert got == expected and type(got) is type(expected), (got, expected)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("rotary_base", 0, "a positive number"),
        ("rotary_base", "1e6", "a positive number"),
        ("rotary_base", None, "a positive number"),
        ("rotary_base", True, "a positive number"),
        ("rotary_base", float("inf"), "a positive number"),
        ("rotary_percent", 1.5, "at most 1"),
        ("hidden_size", 64.0, "a positive integer"),  # a float size cannot shape a tensor
        ("num_layers", None, "a positive integer"),
        ("kv_channels", -16, "a positive integer or null"),
        ("num_moe_experts", 0, "a positive integer or null"),
        ("qk_layernorm", "yes", "true or false"),
        ("normalization", "rmsnorm", "one of LayerNorm, RMSNorm"),
        ("position_embedding_type", ["rope"], "one of learned_absolute"),
    ],
)
def test_values_that_cannot_be_honoured_are_refused_naming_the_field(hf_import_copy, field, value, what):
    with pytest.raises(IncompatibleConfigError) as info:
        load_with(hf_import_copy, **{field: value})
    assert info.value.field == field
    assert f"model.{field} should be" in str(info.value) and what in str(info.value)
    assert str(hf_import_copy[1]) in str(info.value)


def test_a_refused_value_is_summarized_not_repeated(hf_import_copy):
    huge = {"nested": [list(range(1000)) for _ in range(5)], "text": "x" * 50_000}
    with pytest.raises(IncompatibleConfigError) as info:
        load_with(hf_import_copy, hidden_size=huge)
    assert len(str(info.value)) < 400
    assert "hidden_size" in str(info.value) and "dict" in str(info.value)
