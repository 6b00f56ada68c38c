"""The options a model id is made from (megaload.load_options), on the real fixtures."""

from __future__ import annotations

from upstream_fixtures import FIXTURES_DIR

from megaload.load_options import effective_load_options

LAYOUT = {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1}


def _effective(name, model_type=None, dtype=None, overrides=None, roots=(FIXTURES_DIR,), path=None):
    path = path if path is not None else FIXTURES_DIR / name / "checkpoint"
    return effective_load_options(path, (1, 2, 3), model_type, dtype, overrides or {}, checkpoint_roots=roots, **LAYOUT)


def test_megatron_lm_model_type_is_inferred_and_its_own_dtype_dropped():
    assert _effective("mlm_gpt") == ("gpt", None, {})
    assert _effective("mlm_gpt", "gpt", "float32") == ("gpt", None, {})
    assert _effective("mlm_gpt", "mamba", "bfloat16") == ("mamba", "bfloat16", {})


def test_provider_checkpoints_ignore_model_type():
    assert _effective("bridge_gpt_tied_rope_fp32", "gpt", "float32") == (None, None, {})
    assert _effective("hf_llama3", "gpt", "bfloat16") == (None, None, {})  # saved bf16
    assert _effective("hf_llama3", None, "float32") == (None, "float32", {})
    hf_dir = FIXTURES_DIR / "hf_qwen3" / "hf"  # a Hugging Face directory: config.json's dtype
    assert _effective("", "gpt", "bfloat16", path=hf_dir) == (None, None, {})


def test_overrides_equal_to_the_layout_are_dropped_others_kept_for_the_engine_to_refuse():
    same = {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1, "context_parallel_size": 1,
            "expert_model_parallel_size": 1, "expert_tensor_parallel_size": 1, "sequence_parallel": False}
    assert _effective("mlm_gpt", overrides=same)[2] == {}
    other = {"tensor_model_parallel_size": 1, "context_parallel_size": 2, "sequence_parallel": True}
    assert _effective("mlm_gpt", overrides=other)[2] == other


def test_an_unreadable_config_keeps_the_options_as_given(tmp_path):
    (tmp_path / "iter_0000001").mkdir()
    assert _effective("", "gpt", "float32", path=tmp_path / "iter_0000001", roots=(tmp_path,)) == ("gpt", "float32", {})
    # outside the checkpoint roots nothing is read
    assert _effective("mlm_gpt", None, "float32", roots=(tmp_path,)) == (None, "float32", {})
