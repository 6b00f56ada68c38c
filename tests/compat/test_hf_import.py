"""A Hugging Face model directory as a checkpoint path, and ``import-hf``, against upstream.

For every fixture imported by upstream's ``AutoBridge`` (those with ``hf/``, the original model):
- ``load_model_config(hf/)`` is, field for field, what upstream made of the same config.json
  (the fixture's ``run_config.yaml``, read back), and names the same Bridge provider class;
- ``load_megatron_model(hf/)`` gives upstream loader's tensors of its import
  (``reference_state_dict.safetensors``), key for key, dtype for dtype, bit for bit, also from
  a sharded copy written by transformers' ``save_pretrained``;
- ``import_hf`` then ``export_hf`` gives back the original tensors and config.json fields;
- bad directories (unsupported architecture, remote code, missing or truncated safetensors,
  shapes contradicting config.json, files outside the roots) are refused with a typed error
  naming the file and the field, and nothing is left at the destination.
Upstream's own loader reading our import is in ``tests/upstream/test_oracle_roundtrip.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

from megaload.checkpoint import (
    CorruptCheckpointError,
    OutsideRootsError,
    UnmappableModelError,
    confined_to,
    import_hf,
    load_megatron_model,
    load_model_config,
    load_tokenizer,
    model_state_dict,
)
from megaload.checkpoint._run_config import provider_from_run_config, read_run_config
from megaload.hf import export_hf

HF_FIXTURES = tuple(name for name in FIXTURE_NAMES if (FIXTURES_DIR / name / "hf" / "config.json").is_file())


def _hf(name: str) -> Path:
    return FIXTURES_DIR / name / "hf"


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


FIXTURES_MCORE = "0.16.1"  # what upstream's import ran on (fixtures/README.md)


def megatron_core_version() -> str:
    from importlib.metadata import version

    return version("megatron-core")


def _is_installed_default(name: str, value) -> bool:
    from megaload.checkpoint import GPTModelProvider

    field = GPTModelProvider.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        return _comparable(value) == _comparable(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return _comparable(value) == _comparable(field.default_factory())
    return False


def _comparable(value):
    if isinstance(value, functools.partial):  # init methods: partial objects compare by identity
        return (value.func, value.args, tuple(sorted(value.keywords.items())))
    return value


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_config_is_what_upstream_made_of_the_same_config_json(name):
    config, args = load_model_config(_hf(name))
    assert args is None
    run_config = FIXTURES_DIR / name / "checkpoint" / "iter_0000000" / "run_config.yaml"
    theirs = provider_from_run_config(read_run_config(run_config), path=run_config)
    differ = {f.name: (getattr(config, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(theirs)
              if _comparable(getattr(config, f.name)) != _comparable(getattr(theirs, f.name))}
    if megatron_core_version() != FIXTURES_MCORE:  # fields whose default changed between megatron-core releases
        differ = {k: v for k, v in differ.items() if not _is_installed_default(k, v[0])}
    assert set(differ) == {"hf_model_id"}, differ  # upstream records the path it was given
    assert config.hf_model_id == str(_hf(name))
    assert config.source_target == theirs.source_target


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_loading_the_directory_gives_upstreams_import(name, references, assert_bitwise_equal):
    model = load_megatron_model(_hf(name), use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), references.state_dict(name))
    state = load_megatron_model(_hf(name), use_cpu_init=True, return_state_dict=True)
    assert_bitwise_equal({f"model.{k}": v for k, v in state["model"].items()}, references.state_dict(name))


def test_a_sharded_directory_loads_the_same(tmp_path, references, assert_bitwise_equal):
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained(_hf("hf_llama3"), dtype=torch.bfloat16)
    original.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(_hf("hf_llama3") / f, tmp_path / "sharded" / f)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    model = load_megatron_model(tmp_path / "sharded", use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), references.state_dict("hf_llama3"))


def test_the_tokenizer_comes_from_the_directory():
    from tokenizers import Tokenizer

    text = "Hello world, this is a test."
    ours = load_tokenizer(_hf("hf_qwen2"))
    theirs = Tokenizer.from_file(str(_hf("hf_qwen2") / "tokenizer.json"))
    assert ours.tokenize(text) == theirs.encode(text, add_special_tokens=False).ids
    assert ours.vocab_size == theirs.get_vocab_size()


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_import_then_export_gives_back_the_original(name, tmp_path, assert_bitwise_equal):
    saved = import_hf(_hf(name), tmp_path / "megatron")
    assert saved == tmp_path / "megatron"
    assert (saved / "iter_0000000" / "tokenizer" / "tokenizer.json").is_file()
    out = export_hf(saved, tmp_path / "hf")
    assert_bitwise_equal(_tensors(out), _tensors(_hf(name)))
    original = json.loads((_hf(name) / "config.json").read_text())
    ours = json.loads((out / "config.json").read_text())
    for field in ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings",
                  "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "num_experts",
                  "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "sliding_window", "head_dim"):
        if field in original:
            assert ours[field] == original[field], field


# -- bad directories ---------------------------------------------------------------------------------


def _copy(tmp_path: Path, name: str = "hf_qwen2") -> Path:
    dest = tmp_path / "src"
    shutil.copytree(_hf(name), dest)
    return dest


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _refused(tmp_path: Path, src: Path, error: type, *words: str) -> BaseException:
    dest = tmp_path / "out"
    with pytest.raises(error) as info:
        import_hf(src, dest)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no staging leftovers either
    return info.value


@pytest.mark.parametrize("changes, field", [
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "architectures"),
    ({"model_type": "llama"}, "model_type"),
    ({"auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}}, "auto_map"),
    ({"trust_remote_code": True}, "trust_remote_code"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
])
def test_configs_that_cannot_be_mapped_are_refused_naming_the_field(tmp_path, changes, field):
    src = _copy(tmp_path)
    _edit_config(src, **changes)
    error = _refused(tmp_path, src, UnmappableModelError, "config.json", field)
    assert error.field == field
    assert error.path == str(src / "config.json")


def test_shapes_that_contradict_config_json_are_refused_naming_the_tensor_and_file(tmp_path):
    src = _copy(tmp_path)
    _edit_config(src, intermediate_size=96)
    error = _refused(tmp_path, src, UnmappableModelError, "model.safetensors", "mlp.gate_proj.weight", "[160, 64]")
    assert error.path == str(src / "model.safetensors")


def test_a_truncated_safetensors_file_is_refused_naming_it(tmp_path):
    src = _copy(tmp_path)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 100])
    _refused(tmp_path, src, CorruptCheckpointError, str(src / "model.safetensors"), "truncated")
    (src / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:64])
    _refused(tmp_path, src, CorruptCheckpointError, str(src / "model.safetensors"), "header")


def test_a_missing_shard_is_refused_naming_it(tmp_path):
    import transformers

    src = tmp_path / "src"
    model = transformers.AutoModelForCausalLM.from_pretrained(_hf("hf_llama3"), dtype=torch.bfloat16)
    model.save_pretrained(src, max_shard_size="40KB")
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.unlink()
    _refused(tmp_path, src, CorruptCheckpointError, shard.name, "missing")


def test_files_outside_the_roots_are_refused(tmp_path):
    src = _copy(tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.safetensors"
    shutil.move(src / "model.safetensors", elsewhere)
    try:
        (src / "model.safetensors").symlink_to(elsewhere)
        with confined_to([tmp_path]), pytest.raises(OutsideRootsError):
            load_megatron_model(src, use_cpu_init=True)
    finally:
        elsewhere.unlink()


def _cli(*argv: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "service"), str(root / "client")])}
    return subprocess.run([sys.executable, "-m", "megaload", "import-hf", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_imports_and_refuses(tmp_path, references, assert_bitwise_equal):
    shown = _cli("--help")
    assert shown.returncode == 0 and "HF_DIR" in shown.stdout and "--overwrite" in shown.stdout
    done = _cli(str(_hf("hf_mistral")), str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / "m")
    model = load_megatron_model(tmp_path / "m", use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), references.state_dict("hf_mistral"))
    again = _cli(str(_hf("hf_mistral")), str(tmp_path / "m"))
    assert again.returncode == 1 and "CheckpointExistsError" in again.stderr
    src = _copy(tmp_path)
    _edit_config(src, architectures=["BertModel"], model_type="bert")
    refused = _cli(str(src), str(tmp_path / "bad"))
    assert refused.returncode == 1 and "UnmappableModelError" in refused.stderr and "architectures" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "bad").exists()
