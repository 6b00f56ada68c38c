"""The HF view of the upstream fixtures, against what upstream and transformers made.

- Fixtures imported from a Hugging Face model by upstream's AutoBridge (those with ``hf/``,
  the original model): the view's tensors are the original's, key for key, dtype for dtype,
  bit for bit (from upstream's loader output and from ours); config.json agrees with the
  original in every field the HF view maps; the exported directory computes the original's
  logits (``reference_hf_logits.safetensors``) and its tokenizer tokenizes as the original's.
- mlm_gpt (Megatron-LM, fp32, vocabulary 200 padded to 256): transformers' logits of the export
  are megatron-core's (``reference_mcore_logits.safetensors``, first 200 columns) to 1e-4.
- bridge_gpt_tied_rope_fp32 (LayerNorm) is refused naming the field, and nothing is written.

Where a Python with transformers 4.x is at hand (``tests/transformers4.py``), that version
computes the same logits from the exports.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers4 import needs_transformers4, transformers4_logits
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

from megaload.checkpoint import (
    CheckpointExistsError,
    UnmappableModelError,
    load_megatron_model,
    load_model_config,
    load_tokenizer,
    model_state_dict,
)
from megaload.hf import export_hf, hf_view

HF_FIXTURES = tuple(name for name in FIXTURE_NAMES if (FIXTURES_DIR / name / "hf" / "config.json").is_file())
MLM_IDS = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 8, 110, 2, 7, 77]])  # fixtures/README.md
# config.json fields the HF view maps (issue 11), compared through transformers' own config classes.
MAPPED_FIELDS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "attention_bias", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "dtype",
    "rope_parameters", "rope_theta", "rope_scaling", "sliding_window", "hidden_act",
)


def _checkpoint(name: str) -> Path:
    return FIXTURES_DIR / name / "checkpoint"


def _original_tensors(name: str) -> dict[str, torch.Tensor]:
    hf = FIXTURES_DIR / name / "hf"
    index = hf / "model.safetensors.index.json"
    if not index.is_file():
        return load_file(str(hf / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        out.update(load_file(str(hf / shard)))
    return out


def _view(name: str):
    config, args = load_model_config(_checkpoint(name))
    return hf_view(config, megatron_args=args, tokenizer=load_tokenizer(_checkpoint(name)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fixture name -> exported directory, made once."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = export_hf(_checkpoint(name), tmp_path_factory.mktemp(name) / "hf")
        return cache[name]

    return get


# -- fixtures imported from Hugging Face ------------------------------------------------------


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_view_of_upstreams_state_dict_is_the_original_model(name, references, assert_bitwise_equal):
    view = _view(name)
    state = references.state_dict(name)
    assert_bitwise_equal(dict(view.export(state)), _original_tensors(name))


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_view_of_our_loaded_model_is_the_original_model(name, assert_bitwise_equal):
    view = _view(name)
    state = model_state_dict(load_megatron_model(_checkpoint(name), use_cpu_init=True))
    plan = view.tensor_plan(state)
    assert {k: (v.shape, v.dtype) for k, v in plan.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in _original_tensors(name).items()
    }
    assert_bitwise_equal(dict(view.export(state)), _original_tensors(name))


def _config_fields(directory: Path) -> dict:
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    fields = {f: getattr(config, f, None) for f in MAPPED_FIELDS}
    if fields["head_dim"] is None:  # Qwen2's attention takes head_dim from the config when set
        fields["head_dim"] = config.hidden_size // config.num_attention_heads
    return fields


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_config_json_agrees_with_the_original(name, exported):
    import transformers

    original = FIXTURES_DIR / name / "hf"
    ours = exported(name)
    assert _config_fields(ours) == _config_fields(original)
    raw_original = json.loads((original / "config.json").read_text())
    raw_ours = json.loads((ours / "config.json").read_text())
    for field in MAPPED_FIELDS:  # every mapped field the original spells out, with its JSON value
        if field in raw_original and field != "dtype":
            assert raw_ours[field] == raw_original[field], field
    dtype = raw_original.get("dtype", raw_original.get("torch_dtype"))
    assert raw_ours["dtype"] == raw_ours["torch_dtype"] == dtype
    tokenizer = transformers.AutoTokenizer.from_pretrained(original)
    for kind in ("bos", "eos", "pad"):
        assert raw_ours.get(f"{kind}_token_id") == getattr(tokenizer, f"{kind}_token_id"), kind
    generation = json.loads((ours / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


def _bf16_ulp(x: float) -> float:
    return 2.0 ** (math.floor(math.log2(x)) - 7)


def _logits(directory: Path, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_exported_directory_computes_the_original_logits(name, exported):
    reference = load_file(str(FIXTURES_DIR / name / "reference_hf_logits.safetensors"))
    ids, want = reference["input_ids"], reference["logits"]
    got = _logits(exported(name), ids, torch.bfloat16)
    # the same weights in the same run: the same logits as the original directory, exactly
    assert torch.equal(got, _logits(FIXTURES_DIR / name / "hf", ids, torch.bfloat16))
    # and the reference's within bf16 noise (two units in the last place of the largest logit)
    assert (got - want).abs().max() <= 2 * _bf16_ulp(want.abs().max().item())


@needs_transformers4
@pytest.mark.parametrize("name", HF_FIXTURES)
def test_transformers_4_computes_the_original_logits_from_the_export(name, exported):
    reference = load_file(str(FIXTURES_DIR / name / "reference_hf_logits.safetensors"))
    got, loaded = transformers4_logits(exported(name), reference["input_ids"], torch.bfloat16)
    want, _ = transformers4_logits(FIXTURES_DIR / name / "hf", reference["input_ids"], torch.bfloat16)
    assert torch.equal(got, want), loaded
    assert (got - reference["logits"]).abs().max() <= 2 * _bf16_ulp(reference["logits"].abs().max().item())


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_exported_directory_holds_the_save_pretrained_files(name, exported):
    import transformers

    ours = exported(name)
    files = sorted(p.name for p in ours.iterdir())
    bundled = sorted(p.name for p in (_checkpoint(name) / "iter_0000000" / "tokenizer").iterdir())
    assert set(bundled) <= set(files)
    assert {"config.json", "generation_config.json", "model.safetensors.index.json",
            "model-00001-of-00001.safetensors"} <= set(files)
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    original = _original_tensors(name)
    assert set(index["weight_map"]) == set(original)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in original.values())
    text = "Hello world, this is a test."
    ours_tok = transformers.AutoTokenizer.from_pretrained(ours)
    assert ours_tok(text)["input_ids"] == transformers.AutoTokenizer.from_pretrained(FIXTURES_DIR / name / "hf")(text)["input_ids"]


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_the_tables_read_backwards_are_upstreams_import(name, references, assert_bitwise_equal):
    """HF -> Megatron with the same tables gives what upstream's AutoBridge import loads to."""
    view = _view(name)
    rows = references.state_dict(name)["model.embedding.word_embeddings.weight"].shape[0]
    got = dict(view.import_tensors(_original_tensors(name), padded_vocab_size=rows))
    assert_bitwise_equal(got, references.state_dict(name))


def test_hf_tensors_the_config_contradicts_are_refused_naming_the_tensor():
    name = "hf_qwen2"
    view = _view(name)
    original = _original_tensors(name)
    with pytest.raises(UnmappableModelError) as info:
        view.mcore_plan({k: v for k, v in original.items() if k != "model.layers.0.self_attn.k_proj.weight"})
    assert info.value.field == "model.layers.0.self_attn.k_proj.weight"
    with pytest.raises(UnmappableModelError) as info:
        view.mcore_plan(dict(original, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}))
    assert info.value.field == "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(UnmappableModelError) as info:
        view.mcore_plan(dict(original, **{"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}))
    assert info.value.field == "model.layers.0.self_attn.o_proj.bias"
    plan = view.mcore_plan(original)
    assert plan["model.decoder.layers.0.self_attention.linear_qkv.bias"].sources == tuple(
        f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"
    )


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_only_qkv_of_several_query_groups_are_copies(name, references):
    """No second copy of the model: every HF tensor is a view of its Megatron tensor except
    q/k/v when there are several query groups (strided), which are copied one at a time."""
    config, args = load_model_config(_checkpoint(name))
    try:
        view = hf_view(config, megatron_args=args)
    except UnmappableModelError:
        pytest.skip(f"{name} has no Hugging Face form")
    state = references.state_dict(name)
    copied = []
    for hf_name, spec in view.tensor_plan(state).items():
        built = spec.build([state[s] for s in spec.sources])
        source = state[spec.sources[0]]
        if built.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
            copied.append(hf_name)
    groups = view.config_json["num_key_value_heads"]
    assert all(".self_attn." in n and n.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj") for n in copied), copied
    assert bool(copied) == (groups > 1)


def test_names_without_the_model_prefix_are_accepted(references):
    view = _view("hf_qwen2")
    state = references.state_dict("hf_qwen2")
    bare = {k.removeprefix("model."): v for k, v in state.items()}
    plan = view.tensor_plan(bare)
    assert plan["model.embed_tokens.weight"].sources == ("embedding.word_embeddings.weight",)
    assert {k: torch.equal(v, dict(view.export(state))[k]) for k, v in view.export(bare)} == dict.fromkeys(plan, True)


_TE_SPELLINGS = (
    (re.compile(r"\.input_layernorm\.weight$"), ".self_attention.linear_qkv.layer_norm_weight"),
    (re.compile(r"\.pre_mlp_layernorm\.weight$"), ".mlp.linear_fc1.layer_norm_weight"),
    (re.compile(r"\.mlp\.experts\.local_experts\.(\d+)\.linear_fc(\d)\.weight$"), r".mlp.experts.linear_fc\2.weight\1"),
)


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_transformer_engine_spellings_map_as_the_local_ones(name, references, assert_bitwise_equal):
    """Norms fused into TE's linear layers and TE's grouped experts (``linear_fc1.weight<e>``)."""
    local = references.state_dict(name)
    te = {}
    for key, tensor in local.items():
        for pattern, replacement in _TE_SPELLINGS:
            if name != "hf_qwen3_moe" or "experts" in key or "input_layernorm" in key:
                key = pattern.sub(replacement, key)  # MoE layers keep a separate pre-MLP norm under TE
        te[key] = tensor
    assert te.keys() != local.keys()
    view = _view(name)
    assert_bitwise_equal(dict(view.export(te)), dict(view.export(local)))


def test_a_state_dict_the_config_contradicts_is_refused_naming_the_tensor(references):
    name = "hf_qwen2"
    view = _view(name)
    state = dict(references.state_dict(name))
    extra = dict(state, **{"model.decoder.layers.0.self_attention.linear_proj.bias": torch.zeros(64)})
    with pytest.raises(UnmappableModelError) as info:
        view.tensor_plan(extra)
    assert info.value.field == "model.decoder.layers.0.self_attention.linear_proj.bias"
    missing = {k: v for k, v in state.items() if k != "model.decoder.layers.1.mlp.linear_fc1.weight"}
    with pytest.raises(UnmappableModelError) as info:
        view.tensor_plan(missing)
    assert info.value.field == "model.decoder.layers.1.mlp.linear_fc1.weight"
    wrong = dict(state, **{"model.decoder.layers.0.mlp.linear_fc2.weight": torch.zeros(64, 100)})
    with pytest.raises(UnmappableModelError) as info:
        view.tensor_plan(wrong)
    assert info.value.field == "model.decoder.layers.0.mlp.linear_fc2.weight" and "ffn=" in str(info.value)


# -- Megatron-LM ------------------------------------------------------------------------------


def test_megatron_lm_checkpoint_is_a_llama_with_megatron_cores_logits(exported):
    config, args = load_model_config(_checkpoint("mlm_gpt"))
    view = hf_view(config, megatron_args=args, tokenizer=load_tokenizer(_checkpoint("mlm_gpt")))
    assert view.architecture == "LlamaForCausalLM"
    assert (view.config_json["vocab_size"], view.config_json["tie_word_embeddings"]) == (200, False)
    assert view.config_json["max_position_embeddings"] == 64 and view.config_json["torch_dtype"] == "float32"
    directory = exported("mlm_gpt")
    want = load_file(str(FIXTURES_DIR / "mlm_gpt" / "reference_mcore_logits.safetensors"))["logits"]
    assert want.shape[-1] == 256  # padded
    got = _logits(directory, MLM_IDS, torch.float32)
    torch.testing.assert_close(got, want[..., :200], atol=1e-4, rtol=0)


@needs_transformers4
def test_transformers_4_computes_megatron_cores_logits_from_the_megatron_lm_export(exported):
    want = load_file(str(FIXTURES_DIR / "mlm_gpt" / "reference_mcore_logits.safetensors"))["logits"]
    got, loaded = transformers4_logits(exported("mlm_gpt"), MLM_IDS, torch.float32)
    assert loaded.split()[1:] == ["LlamaConfig", "LlamaForCausalLM"]
    torch.testing.assert_close(got, want[..., :200], atol=1e-4, rtol=0)


# -- refused ----------------------------------------------------------------------------------


def test_layernorm_model_is_refused_naming_the_field(tmp_path):
    config, args = load_model_config(_checkpoint("bridge_gpt_tied_rope_fp32"))
    with pytest.raises(UnmappableModelError) as info:
        hf_view(config, megatron_args=args)
    assert info.value.field == "normalization" and "LayerNorm" in str(info.value)
    out = tmp_path / "out"
    with pytest.raises(UnmappableModelError):
        export_hf(_checkpoint("bridge_gpt_tied_rope_fp32"), out)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a partial sibling


def test_export_refuses_to_overwrite_unless_asked(tmp_path, exported):
    first = exported("mlm_gpt")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointExistsError):
        export_hf(_checkpoint("mlm_gpt"), out, overwrite=True)  # not a model directory: never replaced
    (out / "notes.txt").unlink()
    (out / "config.json").write_text("{}")
    with pytest.raises(CheckpointExistsError):
        export_hf(_checkpoint("mlm_gpt"), out)
    assert export_hf(_checkpoint("mlm_gpt"), out, overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in first.iterdir())
    assert json.loads((out / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "service"), str(root / "client")])}
    return subprocess.run([sys.executable, "-m", "megaload", "export-hf", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_exports_and_refuses(tmp_path):
    done = _cli(str(_checkpoint("mlm_gpt")), str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    refused = _cli(str(_checkpoint("bridge_gpt_tied_rope_fp32")), str(tmp_path / "ln"))
    assert refused.returncode == 1
    assert "UnmappableModelError" in refused.stderr and "normalization" in refused.stderr
    assert not (tmp_path / "ln").exists()


def test_cli_help_and_a_bad_shard_size(tmp_path):
    shown = _cli("--help")
    assert shown.returncode == 0
    for flag in ("CHECKPOINT", "OUT_DIR", "--architecture", "--overwrite", "--max-shard-size"):
        assert flag in shown.stdout, flag
    bad = _cli(str(_checkpoint("mlm_gpt")), str(tmp_path / "hf"), "--max-shard-size", "lots")
    assert bad.returncode != 0 and "--max-shard-size" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "hf").exists()
