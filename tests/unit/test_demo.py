"""The embedded demo checkpoint (megaload.demo): real megatron-core, deterministic, idempotent.

Every check reads what ensure_demo_checkpoint wrote with the library's own readers (or
Hugging Face's), never with the demo module.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megaload.checkpoint import (
    CheckpointError,
    DistributedContextError,
    GPTModelProvider,
    initialize_distributed,
    load_megatron_model,
    load_model_config,
    shutdown_distributed,
)
from megaload.demo import (
    DEMO_CHECKPOINT_NAME,
    DEMO_TOKENIZER_NAME,
    demo_checkpoint_complete,
    ensure_demo_checkpoint,
    next_steps,
)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    path = ensure_demo_checkpoint(data)
    assert path == data / DEMO_CHECKPOINT_NAME
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = load_megatron_model(str(path), return_state_dict=True, use_cpu_init=True)
    return {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_demo_is_a_small_gpt_checkpoint_the_library_loads(demo_dir):
    config, mlm_args = load_model_config(str(demo_dir))
    assert isinstance(config, GPTModelProvider) and mlm_args is None
    assert (config.num_layers, config.hidden_size, config.num_attention_heads) == (4, 128, 4)
    tensors = _tensors(demo_dir)
    embedding = tensors["embedding.word_embeddings.weight"]
    assert embedding.shape[1] == 128
    assert embedding.shape[0] % 128 == 0 and embedding.shape[0] >= config.vocab_size
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert sum(1 for k in tensors if k.endswith("linear_qkv.weight")) == 4
    size = sum(p.stat().st_size for p in demo_dir.rglob("*") if p.is_file())
    assert 1_000_000 < size < 10_000_000, f"the demo should be a few MB, is {size} bytes"


def test_weights_are_not_degenerate(demo_dir):
    tensors = _tensors(demo_dir)
    qkv = tensors["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv.std().item() == pytest.approx(0.02, rel=0.2)  # init_method_std
    assert not torch.equal(qkv, tensors["decoder.layers.1.self_attention.linear_qkv.weight"])


def test_same_tensors_and_tokenizer_in_another_directory(demo_dir, tmp_path):
    again = ensure_demo_checkpoint(tmp_path / "elsewhere")
    first, second = _tensors(demo_dir), _tensors(again)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"tensors differ between two generations: {different[:5]}"
    tok = "tokenizer.json"
    assert (again.parent / DEMO_TOKENIZER_NAME / tok).read_bytes() == (demo_dir.parent / DEMO_TOKENIZER_NAME / tok).read_bytes()


def test_second_call_leaves_an_existing_demo_untouched(demo_dir):
    before = _files(demo_dir.parent)
    assert ensure_demo_checkpoint(demo_dir.parent) == demo_dir
    assert ensure_demo_checkpoint(str(demo_dir.parent)) == demo_dir
    assert _files(demo_dir.parent) == before


def test_bundled_tokenizer_round_trips_text(demo_dir):
    from transformers import AutoTokenizer

    from megaload.checkpoint._tokenizer import load_tokenizer

    text = "megaload loads Megatron checkpoints, byte by byte: ü ✓"
    tokenizer = load_tokenizer(str(demo_dir))
    ids = tokenizer.tokenize(text)
    assert ids and all(0 <= i < tokenizer.vocab_size for i in ids)
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned, not only bytes
    assert tokenizer.detokenize(ids) == text
    bundled = AutoTokenizer.from_pretrained(str(demo_dir / "iter_0000000" / "tokenizer"), local_files_only=True)
    assert bundled.encode(text, add_special_tokens=False) == list(ids)
    config, _ = load_model_config(str(demo_dir))
    assert config.vocab_size == tokenizer.vocab_size == len(bundled)


def test_leftovers_of_an_interrupted_write_do_not_block_the_next(tmp_path):
    # What a process killed mid-write leaves: partial siblings, never the published names.
    (tmp_path / f".{DEMO_TOKENIZER_NAME}.partial-0123abcd").mkdir()
    (tmp_path / f".{DEMO_CHECKPOINT_NAME}.partial-0123abcd0123" / "iter_0000000").mkdir(parents=True)
    assert not demo_checkpoint_complete(tmp_path)
    path = ensure_demo_checkpoint(tmp_path)
    assert demo_checkpoint_complete(tmp_path)
    load_model_config(str(path))


def test_refuses_to_run_inside_a_live_process_group(tmp_path, monkeypatch):
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    initialize_distributed("gloo")
    try:
        with pytest.raises(DistributedContextError):
            ensure_demo_checkpoint(tmp_path)
        assert dist.is_initialized()  # the caller's group is left alone
    finally:
        shutdown_distributed()
    assert not (tmp_path / DEMO_CHECKPOINT_NAME).exists()
    assert not parallel_state.model_parallel_is_initialized()


def test_something_else_in_the_way_is_a_typed_error_naming_it(tmp_path):
    (tmp_path / DEMO_CHECKPOINT_NAME).mkdir()
    (tmp_path / DEMO_CHECKPOINT_NAME / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=DEMO_CHECKPOINT_NAME):
        ensure_demo_checkpoint(tmp_path)
    assert (tmp_path / DEMO_CHECKPOINT_NAME / "notes.txt").read_text() == "mine"


def _commands(text: str) -> list[list[str]]:
    return [shlex.split(line.strip()) for line in text.splitlines() if line.startswith("     ")]


def test_next_steps_are_three_commands_on_the_url_and_checkpoint():
    text = next_steps("http://127.0.0.1:9000", "demo-gpt")
    commands = _commands(text)
    programs = [os.path.basename(c[0]) for c in commands]
    assert programs[0] == "curl" and "megaload-client" in programs and programs[-1] == "python"
    for argv in commands:
        assert any("http://127.0.0.1:9000" in a for a in argv), argv
    curl = commands[0]
    assert curl[curl.index("-X") + 1] == "POST" and "http://127.0.0.1:9000/v1/models" in curl
    assert '"checkpoint_path": "demo-gpt"' in curl[curl.index("-d") + 1]
    assert "Authorization" not in text


def test_next_steps_with_a_token_and_without_a_demo():
    text = next_steps("http://127.0.0.1:8000", None, token=True)
    curl = _commands(text)[0]
    assert curl[curl.index("-H") + 1] == "Authorization: Bearer $MEGALOAD_TOKEN"
    assert "$MEGALOAD_TOKEN" in text and "demo-gpt" not in text
