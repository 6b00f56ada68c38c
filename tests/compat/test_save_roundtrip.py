"""save_megatron_model: build or load a model, save it, load it back, compare bit for bit.

Also the layout written (Megatron Bridge's), tokenizer bundling, refusal to overwrite, atomic
publishing when a save fails, and the load errors of damaged checkpoints.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from megatron.core.transformer import TransformerConfig
from upstream_fixtures import FIXTURE_NAMES

from megaload.checkpoint import (
    CheckpointError,
    CheckpointExistsError,
    CorruptCheckpointError,
    GPTModelProvider,
    IncompatibleConfigError,
    InvalidDtypeError,
    TokenizerError,
    UnsupportedCheckpointError,
    load_megatron_model,
    load_model_config,
    megatron_cpu_init_context,
    model_state_dict,
    parse_dtype,
    read_tensor_metadata,
    save_megatron_model,
    temporary_distributed_context,
)
from megaload.checkpoint._pickle import load_dcp_metadata

SMALL = dict(
    num_layers=2,
    hidden_size=32,
    num_attention_heads=4,
    ffn_hidden_size=64,
    vocab_size=100,
    seq_length=32,
    should_pad_vocab=True,
    position_embedding_type="rope",
)


def build_gpt(seed: int, **overrides):
    """A small GPT with random weights: megatron-core's own initialization under a manual seed,
    then noise on every tensor (so no two are alike, layer norms included) and a -0.0 and a
    NaN in the final norm's weight, whose bits must survive the trip."""
    provider = GPTModelProvider(**{**SMALL, **overrides})
    assert provider.perform_initialization
    with temporary_distributed_context():
        torch.manual_seed(seed)
        with megatron_cpu_init_context(provider):
            model = provider.provide()
    assert provider.use_cpu_initialization is False  # restored
    if provider.bf16:
        # what upstream's builder does to a bf16 model (megatron-core's Float16Module): the norms,
        # which megatron-core builds in float32, become bf16 like every other parameter
        model.bfloat16()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.01)
        norm = model.decoder.final_layernorm.weight
        norm[0] = -0.0
        norm[1] = float("nan")
    return provider, model


def flat(state: dict) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


def assert_bridge_layout(save_dir: Path) -> Path:
    assert (save_dir / "latest_checkpointed_iteration.txt").read_text() == "0"
    iter_dir = save_dir / "iter_0000000"
    names = {p.name for p in iter_dir.iterdir()}
    assert {".metadata", "common.pt", "metadata.json", "run_config.yaml"} <= names
    assert any(n.endswith(".distcp") for n in names)
    assert json.loads((iter_dir / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    common = torch.load(iter_dir / "common.pt", weights_only=True)  # plain data only
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0
    run_config = yaml.safe_load((iter_dir / "run_config.yaml").read_text())
    # our GPT provider's class, or the same-field Bridge class the source recorded (MistralModelProvider)
    assert run_config["model"]["_target_"] in (
        "megatron.bridge.models.gpt_provider.GPTModelProvider",
        "megatron.bridge.models.mistral.mistral_provider.MistralModelProvider",
    )
    assert run_config["checkpoint"]["save"] == str(save_dir)
    return iter_dir


@pytest.fixture(scope="module")
def small_fp32(tmp_path_factory):
    """One saved small fp32 GPT shared by the read-only tests: (provider, weights, save_dir)."""
    provider, model = build_gpt(1234)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    save_dir = tmp_path_factory.mktemp("small") / "ckpt"
    save_megatron_model(model, save_dir)
    return provider, weights, save_dir


# --- build, save, load ------------------------------------------------------------------------


def test_small_gpt_layout(small_fp32, references):
    _, _, save_dir = small_fp32
    iter_dir = assert_bridge_layout(save_dir)
    # common.pt holds what Bridge's own save puts there
    bridge = references.notes("bridge_gpt_tied_rope_fp32")["layout"]
    common = torch.load(iter_dir / "common.pt", weights_only=True)
    assert {k: type(v).__name__ for k, v in common.items()} == bridge["common_pt_keys"]
    assert common["content_metadata"] == bridge["common_pt_content_metadata"]
    assert not leftovers(save_dir.parent)


def test_small_gpt_round_trip_bit_for_bit(small_fp32, assert_bitwise_equal):
    _, weights, save_dir = small_fp32
    norm = weights["model.decoder.final_layernorm.weight"]
    assert torch.isnan(norm[1]) and torch.signbit(norm[0]) and norm[0] == 0
    state = load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    assert sorted(state) == ["checkpoint_version", "content_metadata", "iteration", "model"]
    assert_bitwise_equal(flat(state), weights)
    model = load_megatron_model(save_dir, use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(model), weights)


def test_small_gpt_vocab_is_padded(small_fp32):
    _, weights, save_dir = small_fp32
    # 100 rounded up to the next multiple of make_vocab_size_divisible_by (128)
    assert weights["model.embedding.word_embeddings.weight"].shape == (128, 32)
    assert read_tensor_metadata(save_dir)["embedding.word_embeddings.weight"].shape == (128, 32)


def test_small_gpt_config_round_trip(small_fp32):
    provider, _, save_dir = small_fp32
    cfg, args = load_model_config(save_dir)
    assert args is None and isinstance(cfg, GPTModelProvider)
    for field in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size", "seq_length",
                  "should_pad_vocab", "position_embedding_type", "make_vocab_size_divisible_by", "normalization",
                  "share_embeddings_and_output_weights", "rotary_base", "rotary_percent", "params_dtype",
                  "layernorm_epsilon", "num_query_groups", "kv_channels", "add_bias_linear", "gated_linear_unit",
                  "transformer_layer_spec", "init_method_std", "use_cpu_initialization", "perform_initialization"):
        assert getattr(cfg, field) == getattr(provider, field), field
    assert cfg.activation_func is provider.activation_func


def test_bf16_round_trip(tmp_path, assert_bitwise_equal):
    _, model = build_gpt(7, bf16=True, params_dtype=torch.bfloat16)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    assert weights["model.embedding.word_embeddings.weight"].dtype == torch.bfloat16
    save_megatron_model(model, tmp_path / "bf16")
    assert_bridge_layout(tmp_path / "bf16")
    cfg, _ = load_model_config(tmp_path / "bf16")
    assert cfg.bf16 is True and cfg.params_dtype == torch.bfloat16
    state = load_megatron_model(tmp_path / "bf16", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)
    loaded = load_megatron_model(tmp_path / "bf16", use_cpu_init=True)
    assert_bitwise_equal(model_state_dict(loaded), weights)


def test_untied_rmsnorm_swiglu_gqa_round_trip(tmp_path, assert_bitwise_equal):
    import torch.nn.functional as F

    _, model = build_gpt(
        11, share_embeddings_and_output_weights=False, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=F.silu, num_query_groups=2, add_bias_linear=False,
    )
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    assert "model.output_layer.weight" in weights
    save_megatron_model(model, tmp_path / "ckpt")
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)


def test_save_inside_an_existing_group(tmp_path, assert_bitwise_equal):
    _, model = build_gpt(3)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    with temporary_distributed_context():
        save_megatron_model(model, tmp_path / "ckpt")
        assert dist.is_initialized()  # the caller's group is left alone
        state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)


def test_save_accepts_a_list_of_chunks_and_str_path(tmp_path, assert_bitwise_equal):
    _, model = build_gpt(5)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    save_megatron_model([model], str(tmp_path / "ckpt"))
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)


def test_low_memory_save_frees_the_model(tmp_path, assert_bitwise_equal):
    _, model = build_gpt(9)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    chunks = [model]
    save_megatron_model(chunks, tmp_path / "ckpt", low_memory_save=True)
    assert chunks == []
    assert all(p.numel() == 0 for p in model.parameters())
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)


# --- save a loaded fixture again ---------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_resave_fixture_matches_reference(tmp_path, references, assert_bitwise_equal, name):
    model = load_megatron_model(references.save_dir(name), use_cpu_init=True)
    save_megatron_model(model, tmp_path / "resaved")
    assert_bridge_layout(tmp_path / "resaved")
    state = load_megatron_model(tmp_path / "resaved", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), references.state_dict(name))
    # the same global tensors on disk as upstream wrote
    entries = references.notes(name)["layout"]["distcp_entries"]
    got = read_tensor_metadata(tmp_path / "resaved")
    want = {k: e for k, e in entries.items() if e["kind"] == "TensorStorageMetadata" and not k.startswith("rng_state")}
    assert {k: (list(m.shape), str(m.dtype)) for k, m in got.items()} == {
        k: (e["size"], e["dtype"]) for k, e in want.items()
    }


def test_resave_bridge_fixture_has_upstreams_metadata_entries(tmp_path, references):
    name = "bridge_gpt_tied_rope_fp32"
    model = load_megatron_model(references.save_dir(name), use_cpu_init=True)
    save_megatron_model(model, tmp_path / "resaved")
    metadata = load_dcp_metadata(tmp_path / "resaved" / "iter_0000000")
    assert set(metadata.state_dict_metadata) == set(references.notes(name)["layout"]["distcp_entries"])


def test_resave_mlm_fixture_converts_it_to_bridge(tmp_path, references):
    model = load_megatron_model(references.save_dir("mlm_gpt"), use_cpu_init=True)
    save_megatron_model(model, tmp_path / "converted")
    cfg, args = load_model_config(tmp_path / "converted")
    assert isinstance(cfg, GPTModelProvider) and args is None
    ref = references.config("mlm_gpt")
    for field in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                  "normalization", "gated_linear_unit", "add_bias_linear", "layernorm_epsilon", "kv_channels"):
        assert getattr(cfg, field) == ref[field], field
    assert cfg.activation_func.__name__ == ref["activation_func"]
    assert cfg.vocab_size == ref["mlm_args.vocab_size"]
    assert cfg.effective_vocab_size() == ref["mlm_args.padded_vocab_size"]
    assert cfg.seq_length == ref["mlm_args.max_position_embeddings"]
    assert cfg.position_embedding_type == ref["mlm_args.position_embedding_type"]
    assert cfg.rotary_base == ref["mlm_args.rotary_base"]
    assert cfg.share_embeddings_and_output_weights is not ref["mlm_args.untie_embeddings_and_output_weights"]
    run_config = yaml.safe_load((tmp_path / "converted" / "iter_0000000" / "run_config.yaml").read_text())
    assert run_config["tokenizer"]["tokenizer_type"] == ref["mlm_args.tokenizer_type"]


# --- tokenizer bundling -------------------------------------------------------------------------


@pytest.fixture
def tiny_hf_tokenizer(tmp_path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3, "megatron": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    out = tmp_path / "hf_tokenizer"
    fast.save_pretrained(str(out))
    return out


def test_save_with_hf_tokenizer(tmp_path, tiny_hf_tokenizer):
    from transformers import PreTrainedTokenizerFast

    _, model = build_gpt(21)
    save_megatron_model(model, tmp_path / "ckpt", hf_tokenizer_path=tiny_hf_tokenizer)
    iter_dir = assert_bridge_layout(tmp_path / "ckpt")
    bundled = iter_dir / "tokenizer"
    assert (bundled / "tokenizer.json").is_file()
    assert (bundled / "tokenizer_config.json").is_file()
    run_config = yaml.safe_load((iter_dir / "run_config.yaml").read_text())
    section = run_config["tokenizer"]
    assert section["tokenizer_type"] == "HuggingFaceTokenizer"
    assert section["tokenizer_model"] == str(tiny_hf_tokenizer)
    # the bundled copy is a working tokenizer with the same vocabulary
    again = PreTrainedTokenizerFast.from_pretrained(str(bundled))
    assert again("hello megatron world")["input_ids"] == [2, 4, 3]


def test_save_without_tokenizer_records_none(small_fp32):
    _, _, save_dir = small_fp32
    iter_dir = save_dir / "iter_0000000"
    assert not (iter_dir / "tokenizer").exists()
    assert yaml.safe_load((iter_dir / "run_config.yaml").read_text())["tokenizer"] is None


# --- existing destinations ----------------------------------------------------------------------


def test_existing_checkpoint_is_not_overwritten(tmp_path):
    _, model_b = build_gpt(99)
    save_dir = tmp_path / "ckpt"
    _, model_a = build_gpt(98)
    save_megatron_model(model_a, save_dir)
    before = snapshot(save_dir)
    with pytest.raises(CheckpointExistsError) as info:
        save_megatron_model(model_b, save_dir)
    assert isinstance(info.value, FileExistsError)
    assert str(save_dir) in str(info.value)
    assert snapshot(save_dir) == before
    assert not leftovers(tmp_path)


def test_overwrite_replaces_the_checkpoint(tmp_path, assert_bitwise_equal):
    save_dir = tmp_path / "ckpt"
    _, model_a = build_gpt(31)
    save_megatron_model(model_a, save_dir)
    _, model_b = build_gpt(32, bf16=True, params_dtype=torch.bfloat16)
    weights_b = {k: v.clone() for k, v in model_state_dict(model_b).items()}
    save_megatron_model(model_b, save_dir, overwrite=True)
    state = load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights_b)
    assert load_model_config(save_dir)[0].bf16 is True
    assert not leftovers(tmp_path)


def test_directory_with_unrelated_files_is_refused(tmp_path):
    target = tmp_path / "mydata"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    (target / "sub").mkdir()
    (target / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(target)
    _, model = build_gpt(41)
    for overwrite in (False, True):
        with pytest.raises(CheckpointExistsError) as info:
            save_megatron_model(model, target, overwrite=overwrite)
        assert str(target) in str(info.value)
    assert snapshot(target) == before
    assert not leftovers(tmp_path)


def test_empty_directory_is_used(tmp_path, assert_bitwise_equal):
    target = tmp_path / "empty"
    target.mkdir()
    _, model = build_gpt(43)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    save_megatron_model(model, target)
    assert_bridge_layout(target)
    assert_bitwise_equal(flat(load_megatron_model(target, return_state_dict=True, use_cpu_init=True)), weights)


def test_a_file_at_path_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    _, model = build_gpt(44)
    with pytest.raises(CheckpointExistsError):
        save_megatron_model(model, target, overwrite=True)
    assert target.read_text() == "x"


def test_missing_parent_is_an_error(tmp_path):
    _, model = build_gpt(45)
    with pytest.raises(CheckpointError) as info:
        save_megatron_model(model, tmp_path / "no" / "such" / "ckpt")
    assert str(tmp_path / "no" / "such") in str(info.value)
    assert not (tmp_path / "no").exists()


def test_unsupported_format_is_refused(tmp_path):
    _, model = build_gpt(46)
    with pytest.raises(UnsupportedCheckpointError) as info:
        save_megatron_model(model, tmp_path / "ckpt", ckpt_format="zarr")
    assert "zarr" in str(info.value)
    assert not (tmp_path / "ckpt").exists()


def test_empty_model_list_is_refused(tmp_path):
    with pytest.raises(IncompatibleConfigError):
        save_megatron_model([], tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_non_gpt_megatron_chunk_is_refused(tmp_path):
    class NotGPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2)
            self.linear = torch.nn.Linear(8, 8)

    with pytest.raises(UnsupportedCheckpointError) as info:
        save_megatron_model(NotGPT(), tmp_path / "ckpt")
    assert "NotGPT" in str(info.value)
    assert not (tmp_path / "ckpt").exists() and not leftovers(tmp_path)


def test_plain_torch_module_is_refused_with_a_typed_error(tmp_path):
    with pytest.raises(UnsupportedCheckpointError):
        save_megatron_model(torch.nn.Linear(4, 4), tmp_path / "ckpt")


# --- saves that fail midway ---------------------------------------------------------------------


def test_failing_tokenizer_after_weights_leaves_nothing(tmp_path):
    """The weights are written into the staging directory, then bundling the tokenizer fails."""
    _, model = build_gpt(51)
    with pytest.raises(TokenizerError):
        save_megatron_model(model, tmp_path / "ckpt", hf_tokenizer_path=tmp_path / "no-such-tokenizer")
    assert not (tmp_path / "ckpt").exists()
    assert not leftovers(tmp_path)
    assert not dist.is_initialized()


def test_failing_save_keeps_the_previous_checkpoint(tmp_path):
    save_dir = tmp_path / "ckpt"
    _, model_a = build_gpt(52)
    save_megatron_model(model_a, save_dir)
    before = snapshot(save_dir)
    _, model_b = build_gpt(53)
    with pytest.raises(TokenizerError):
        save_megatron_model(model_b, save_dir, overwrite=True, hf_tokenizer_path=tmp_path / "no-such-tokenizer")
    assert snapshot(save_dir) == before
    assert not leftovers(tmp_path)


def test_writer_error_after_data_files_leaves_nothing(tmp_path, monkeypatch):
    """Disk trouble reported once the strategy has written every data file."""
    from megaload.checkpoint import _writer

    original = _writer.SyncTorchDistSaveStrategy.save
    seen = []

    def save_then_fail(self, sharded_state_dict, checkpoint_dir):
        original(self, sharded_state_dict, checkpoint_dir)
        seen.extend(p.name for p in Path(checkpoint_dir).iterdir())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_writer.SyncTorchDistSaveStrategy, "save", save_then_fail)
    _, model = build_gpt(54)
    with pytest.raises(OSError):
        save_megatron_model(model, tmp_path / "ckpt")
    assert any(n.endswith(".distcp") for n in seen)  # the failure really came midway
    assert not (tmp_path / "ckpt").exists()
    assert not leftovers(tmp_path)
    assert not dist.is_initialized()


def test_io_error_in_a_writer_thread_never_publishes_a_broken_checkpoint(tmp_path, monkeypatch, assert_bitwise_equal):
    """Fault injection: an I/O error while writing a data file on a thread other than the caller's
    (disk full, EIO). Either the save fails and leaves nothing, or what it published is complete."""
    from torch.distributed.checkpoint import filesystem

    original = filesystem._write_item
    main = threading.main_thread()

    def faulty_write_item(*args, **kwargs):
        if threading.current_thread() is main:
            time.sleep(0.2)  # let any helper thread pick up its own file
            return original(*args, **kwargs)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(filesystem, "_write_item", faulty_write_item)
    _, model = build_gpt(55)
    weights = {k: v.clone() for k, v in model_state_dict(model).items()}
    try:
        save_megatron_model(model, tmp_path / "ckpt")
    except (OSError, CheckpointError):
        assert not (tmp_path / "ckpt").exists()
        assert not leftovers(tmp_path)
        return
    monkeypatch.undo()
    state = load_megatron_model(tmp_path / "ckpt", return_state_dict=True, use_cpu_init=True)
    assert_bitwise_equal(flat(state), weights)


# --- damaged checkpoints, bad arguments ---------------------------------------------------------


@pytest.fixture
def saved_copy(tmp_path, small_fp32):
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(small_fp32[2], dest)
    return dest


@pytest.mark.parametrize("return_state_dict", [True, False])
@pytest.mark.parametrize("source", ["saved", "fixture"])
def test_truncated_distcp_is_corrupt(saved_copy, copy_fixture, source, return_state_dict):
    save_dir = saved_copy if source == "saved" else copy_fixture("bridge_gpt_tied_rope_fp32")
    iter_dir = save_dir / "iter_0000000"
    for data_file in sorted(iter_dir.glob("*.distcp")):
        data = data_file.read_bytes()
        data_file.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptCheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=return_state_dict, use_cpu_init=True)
    assert str(iter_dir) in str(info.value)
    assert not dist.is_initialized()


def test_missing_distcp_file_is_corrupt(saved_copy):
    iter_dir = saved_copy / "iter_0000000"
    sorted(iter_dir.glob("*.distcp"))[-1].unlink()
    with pytest.raises(CorruptCheckpointError) as info:
        load_megatron_model(saved_copy, return_state_dict=True, use_cpu_init=True)
    assert str(iter_dir) in str(info.value)


@pytest.mark.parametrize("source", ["saved", "fixture"])
def test_missing_metadata_is_corrupt(saved_copy, copy_fixture, source):
    save_dir = saved_copy if source == "saved" else copy_fixture("mlm_gpt")
    iter_dir = next(save_dir.glob("iter_*"))
    (iter_dir / ".metadata").unlink()
    with pytest.raises(CorruptCheckpointError) as info:
        load_megatron_model(save_dir, return_state_dict=True, use_cpu_init=True)
    assert ".metadata" in str(info.value) and str(iter_dir) in str(info.value)


def test_garbage_run_config_of_a_saved_checkpoint_is_corrupt(saved_copy):
    rc = saved_copy / "iter_0000000" / "run_config.yaml"
    rc.write_text("model: [oops")
    with pytest.raises(CorruptCheckpointError) as info:
        load_megatron_model(saved_copy, use_cpu_init=True)
    assert str(rc) in str(info.value)


@pytest.mark.parametrize("spelling", ["bf17", "fp8", "float-32"])
def test_wrong_dtype_string_is_invalid_dtype_error(spelling):
    with pytest.raises(InvalidDtypeError) as info:
        parse_dtype(spelling)
    assert repr(spelling) in str(info.value)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_mp_overrides_unknown_key(references, name):
    with pytest.raises(IncompatibleConfigError) as info:
        load_megatron_model(references.save_dir(name), use_cpu_init=True, mp_overrides={"hidden_size": 128})
    assert info.value.field == "mp_overrides.hidden_size"
    assert "hidden_size" in str(info.value)
    assert not dist.is_initialized()


@pytest.mark.parametrize("field", ["tensor_model_parallel_size", "pipeline_model_parallel_size"])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_mp_overrides_beyond_one_process(references, name, field):
    with pytest.raises(IncompatibleConfigError) as info:
        load_megatron_model(references.save_dir(name), use_cpu_init=True, mp_overrides={field: 2})
    assert info.value.field == field
    assert field in str(info.value)
    assert not dist.is_initialized()


def test_mp_overrides_that_fit_one_process(references, assert_bitwise_equal):
    state = load_megatron_model(
        references.save_dir("mlm_gpt"), return_state_dict=True, use_cpu_init=True,
        mp_overrides={"tensor_model_parallel_size": 1, "sequence_parallel": False, "context_parallel_size": None},
    )
    assert_bitwise_equal(flat(state), references.state_dict("mlm_gpt"))
