"""Weights of the upstream fixtures, bit for bit against the upstream loader's state dict.

``reference_state_dict.safetensors`` is Megatron Bridge's
``load_megatron_model(iter_dir, return_state_dict=True, use_cpu_init=True)`` flattened with '.',
non-tensors and ``_extra_state`` dropped (listed in reference_notes.json). The on-disk
``.metadata`` entries are in reference_notes.json too.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from upstream_fixtures import FIXTURE_NAMES

from megaload.checkpoint import (
    IncompatibleConfigError,
    TensorMetadata,
    estimate_model_bytes,
    load_megatron_model,
    model_config,
    model_state_dict,
    read_tensor_metadata,
    temporary_distributed_context,
)


@pytest.fixture(scope="module")
def loaded(references):
    """Our loads of every fixture, shared by the tests of this module (read only)."""
    out = {}
    for name in FIXTURE_NAMES:
        out[(name, "state_dict", "save_dir")] = load_megatron_model(
            references.save_dir(name), return_state_dict=True, use_cpu_init=True
        )
        out[(name, "state_dict", "iter_dir")] = load_megatron_model(
            references.iter_dir(name), return_state_dict=True, use_cpu_init=True
        )
        out[(name, "model", "save_dir")] = load_megatron_model(references.save_dir(name), use_cpu_init=True)
    return out


@pytest.mark.parametrize("kind", ["save_dir", "iter_dir"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_top_level_keys(references, loaded, name, kind):
    state = loaded[(name, "state_dict", kind)]
    assert sorted(state) == references.notes(name)["state_dict"]["top_level_keys"]


@pytest.mark.parametrize("kind", ["save_dir", "iter_dir"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_state_dict_bit_for_bit(references, loaded, flatten_state_dict, assert_bitwise_equal, name, kind):
    tensors, _ = flatten_state_dict(loaded[(name, "state_dict", kind)])
    reference = references.state_dict(name)
    assert len(reference) == references.notes(name)["state_dict"]["num_tensors"]
    assert_bitwise_equal(tensors, reference)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_non_tensor_entries_match_notes(references, loaded, flatten_state_dict, name):
    _, others = flatten_state_dict(loaded[(name, "state_dict", "save_dir")])
    assert others == references.notes(name)["state_dict"]["skipped"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_non_tensor_values_match_on_disk_layout(references, loaded, name):
    state = loaded[(name, "state_dict", "save_dir")]
    layout = references.notes(name)["layout"]
    assert state["checkpoint_version"] == layout["common_pt_checkpoint_version"]
    assert state["iteration"] == layout["common_pt_iteration"]
    assert state["content_metadata"] == layout["common_pt_content_metadata"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_tensor_shapes_and_dtypes_match_notes(references, loaded, flatten_state_dict, name):
    tensors, _ = flatten_state_dict(loaded[(name, "state_dict", "save_dir")])
    notes = references.notes(name)["state_dict"]["tensors"]
    assert set(tensors) == set(notes)
    for key, meta in notes.items():
        assert list(tensors[key].shape) == meta["shape"], key
        assert str(tensors[key].dtype) == meta["dtype"], key


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_loaded_model_weights_bit_for_bit(references, loaded, assert_bitwise_equal, name):
    model = loaded[(name, "model", "save_dir")]
    assert isinstance(model, list) and len(model) == 1
    assert_bitwise_equal(model_state_dict(model), references.state_dict(name))
    # a single chunk (not a list) is accepted too
    assert_bitwise_equal(model_state_dict(model[0]), references.state_dict(name))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_loaded_model_is_on_cpu_in_eval_ready_state(references, loaded, name):
    model = loaded[(name, "model", "save_dir")]
    for param in model[0].parameters():
        assert param.device.type == "cpu"
    cfg = model_config(model)
    assert cfg.tensor_model_parallel_size == 1 and cfg.pipeline_model_parallel_size == 1
    # the dtype upstream's loader built the model in (bf16 for Hugging Face imports)
    assert str(cfg.params_dtype) == references.config(name)["params_dtype"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_parameter_has_the_dtype_upstream_returns(references, loaded, name):
    """Every parameter and buffer of the built model has the dtype of upstream's state dict:
    for bf16 checkpoints that includes the norms, which megatron-core's local spec builds in
    float32 unless the model is cast as upstream's Float16Module wrap does."""
    model = loaded[(name, "model", "save_dir")]
    reference = references.state_dict(name)
    dtypes = {name: t.dtype for name, t in model_state_dict(model).items()}
    assert dtypes == {key: t.dtype for key, t in reference.items()}
    assert {t.dtype for t in model[0].parameters()} == {t.dtype for t in reference.values()}


def _tensor_entries(notes: dict) -> dict[str, dict]:
    return {
        key: entry
        for key, entry in notes["layout"]["distcp_entries"].items()
        if entry["kind"] == "TensorStorageMetadata" and not key.startswith(("optimizer.", "rng_state"))
    }


@pytest.mark.parametrize("kind", ["save_dir", "iter_dir"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_read_tensor_metadata_matches_layout(references, name, kind):
    path = references.save_dir(name) if kind == "save_dir" else references.iter_dir(name)
    got = read_tensor_metadata(path)
    want = _tensor_entries(references.notes(name))
    assert set(got) == set(want)
    for key, entry in want.items():
        meta = got[key]
        assert isinstance(meta, TensorMetadata)
        assert meta.name == key
        assert list(meta.shape) == entry["size"], key
        assert str(meta.dtype) == entry["dtype"], key


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_estimate_model_bytes_is_the_sum_of_the_entries(references, name):
    entries = _tensor_entries(references.notes(name)).values()
    numel = [math.prod(e["size"]) for e in entries]
    itemsize = {"torch.float32": 4, "torch.bfloat16": 2, "torch.float16": 2}
    as_stored = sum(n * itemsize[e["dtype"]] for n, e in zip(numel, entries))
    assert estimate_model_bytes(references.save_dir(name)) == as_stored
    assert estimate_model_bytes(references.save_dir(name), dtype=torch.bfloat16) == 2 * sum(numel)


def test_load_inside_an_existing_group(references, assert_bitwise_equal):
    """With a group and model-parallel state already set up, the load uses them and leaves them be."""
    name = "mlm_gpt"
    with temporary_distributed_context():
        state = load_megatron_model(references.save_dir(name), return_state_dict=True, use_cpu_init=True)
        assert dist.is_initialized()
        explicit = load_megatron_model(
            references.save_dir(name), return_state_dict=True, use_cpu_init=True, skip_temp_dist_context=True
        )
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items()}, references.state_dict(name))
    assert_bitwise_equal({f"model.{k}": v for k, v in explicit["model"].items()}, references.state_dict(name))


def test_model_type_gpt_given_explicitly(references, assert_bitwise_equal):
    state = load_megatron_model(references.save_dir("mlm_gpt"), model_type="gpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items()}, references.state_dict("mlm_gpt"))


@pytest.mark.parametrize("model_type", ["bert", "t5", ""])
def test_unknown_model_type_is_incompatible(references, model_type):
    with pytest.raises(IncompatibleConfigError) as info:
        load_megatron_model(references.save_dir("mlm_gpt"), model_type=model_type, use_cpu_init=True)
    assert info.value.field == "model_type"
    assert repr(model_type) in str(info.value)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_build_and_load_model_leaves_the_config_alone(references, assert_bitwise_equal, name):
    from megaload.checkpoint import build_and_load_model, load_model_config

    cfg, args = load_model_config(references.save_dir(name))
    before = {f: getattr(cfg, f) for f in ("use_cpu_initialization", "params_dtype", "perform_initialization",
                                           "tensor_model_parallel_size", "bf16", "fp16")}
    state = build_and_load_model(
        references.save_dir(name), cfg, megatron_args=args, return_state_dict=True, use_cpu_init=True
    )
    assert {f: getattr(cfg, f) for f in before} == before
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items()}, references.state_dict(name))


def test_build_and_load_model_needs_args_for_megatron_lm(references):
    from megaload.checkpoint import build_and_load_model, load_model_config

    cfg, _ = load_model_config(references.save_dir("mlm_gpt"))
    with pytest.raises(IncompatibleConfigError) as info:
        build_and_load_model(references.save_dir("mlm_gpt"), cfg, use_cpu_init=True)
    assert info.value.field == "megatron_args"


def test_mamba_without_its_kernels_is_a_clear_error(references):
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mamba_ssm is installed here")
    from megaload.checkpoint import UnsupportedCheckpointError

    with pytest.raises(UnsupportedCheckpointError) as info:
        load_megatron_model(references.save_dir("mlm_gpt"), model_type="mamba", use_cpu_init=True)
    assert "mamba" in str(info.value).lower()
    assert not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_without_cuda_use_cpu_init_false_falls_back_to_cpu(references, assert_bitwise_equal, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="megaload.checkpoint"):
        state = load_megatron_model(references.save_dir("bridge_gpt_tied_rope_fp32"), return_state_dict=True)
    assert any("CUDA is not available" in r.getMessage() for r in caplog.records)
    assert_bitwise_equal(
        {f"model.{k}": v for k, v in state["model"].items()}, references.state_dict("bridge_gpt_tied_rope_fp32")
    )


def test_grouped_gemm_experts_on_a_cpu_host_are_refused_naming_the_field(copy_fixture):
    """Qwen3-MoE with grouped-GEMM experts needs kernels this CPU host lacks: a typed error
    naming the field, not megatron-core's assertion with an install hint."""
    save_dir = copy_fixture("hf_qwen3_moe")
    run_config = save_dir / "iter_0000000" / "run_config.yaml"
    text = run_config.read_text()
    assert "  moe_grouped_gemm: false\n" in text
    run_config.write_text(text.replace("  moe_grouped_gemm: false\n", "  moe_grouped_gemm: true\n"))
    with pytest.raises(IncompatibleConfigError) as info:
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    assert info.value.field == "moe_grouped_gemm" and str(save_dir) in str(info.value)


def test_grouped_gemm_moe_layers_have_no_stream_key(copy_fixture):
    """A grouped-GEMM MoE model builds Transformer Engine's spec on a host with TE but not the
    grouped_gemm kernels, so its layers' streamed names depend on the host: no template is
    claimed for them (the embedding and output layer keep theirs)."""
    from megaload.checkpoint import read_tensor_metadata, with_stream_keys

    save_dir = copy_fixture("hf_qwen3_moe")
    iter_dir = save_dir / "iter_0000000"
    listing = [{"name": name, "shape": list(meta.shape)} for name, meta in read_tensor_metadata(iter_dir).items()]
    _, sequential = with_stream_keys(iter_dir, listing)
    assert all(t["stream_key"] is not None for t in sequential)
    run_config = iter_dir / "run_config.yaml"
    run_config.write_text(run_config.read_text().replace("  moe_grouped_gemm: false\n", "  moe_grouped_gemm: true\n"))
    _, grouped = with_stream_keys(iter_dir, listing)
    layers = [t for t in grouped if t["name"].startswith("decoder.layers.")]
    assert layers and all(t["stream_key"] is None for t in layers)
    assert all(t["stream_key"] == "model." + t["name"] for t in grouped if t["name"].startswith(("embedding.", "output_layer.")))
