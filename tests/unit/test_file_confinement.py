"""The library on its own: ``confined_to`` checks every file a checkpoint names or links to,
and plain library use (no confinement) reads files where they are.

Real fixture checkpoints, copied; links and files made here.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from megaload.checkpoint import (
    OutsideRootsError,
    allowed_roots,
    confined_to,
    inspect_layout,
    load_model_config,
    load_tokenizer,
    read_tensor_metadata,
)
from megaload.checkpoint._files import read_limited

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def roots(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    outside.mkdir()
    shutil.copytree(FIXTURES / "mlm_gpt" / "checkpoint", inside / "mlm")
    return inside, outside


def _move_out(iter_dir: Path, name: str, outside: Path) -> Path:
    target = outside / name
    shutil.move(iter_dir / name, target)
    (iter_dir / name).symlink_to(target)
    return target


def test_unconfined_reads_follow_links_anywhere(roots):
    inside, outside = roots
    iter_dir = inside / "mlm" / "iter_0000010"
    _move_out(iter_dir, ".metadata", outside)
    assert allowed_roots() is None
    assert read_tensor_metadata(inside / "mlm")  # library use: links are followed


@pytest.mark.parametrize("name", [".metadata", "common.pt", "metadata.json"])
def test_confined_reads_refuse_links_out(roots, name):
    inside, outside = roots
    iter_dir = inside / "mlm" / "iter_0000010"
    target = _move_out(iter_dir, name, outside)
    with confined_to([inside]):
        with pytest.raises(OutsideRootsError) as info:
            inspect_layout(inside / "mlm")
            read_tensor_metadata(inside / "mlm")
            load_model_config(inside / "mlm")
    err = info.value
    assert isinstance(err, PermissionError)
    assert err.path == str(iter_dir / name)
    assert str(target) in str(err) and str(inside) in str(err)
    assert allowed_roots() is None  # the block ended


def test_the_tracker_is_checked_too(roots):
    inside, outside = roots
    _move_out(inside / "mlm", "latest_checkpointed_iteration.txt", outside)
    with confined_to([inside]), pytest.raises(OutsideRootsError):
        inspect_layout(inside / "mlm")


def test_confinement_is_per_thread(roots):
    inside, outside = roots
    _move_out(inside / "mlm" / "iter_0000010", ".metadata", outside)
    seen = []
    with confined_to([inside]):
        worker = threading.Thread(target=lambda: seen.append(allowed_roots()))
        worker.start()
        worker.join()
        assert allowed_roots() == (inside.resolve(),)
    assert seen == [None]


def test_a_fifo_is_refused_not_waited_on(roots):
    inside, _ = roots
    fifo = inside / "fifo.json"
    os.mkfifo(fifo)
    from megaload.checkpoint import CorruptCheckpointError

    with pytest.raises(CorruptCheckpointError, match="not a regular file"):
        read_limited(fifo, 100)


def test_size_limit_names_the_limit(roots):
    inside, _ = roots
    big = inside / "big"
    big.write_bytes(b"x" * 101)
    from megaload.checkpoint import CorruptCheckpointError

    with pytest.raises(CorruptCheckpointError, match="101 bytes; the limit for a thing is 100 bytes"):
        read_limited(big, 100, kind="a thing")
    assert read_limited(big, 101) == b"x" * 101


def test_tokenizer_override_outside_the_roots_is_refused(roots):
    inside, outside = roots
    model = outside / "tokenizer.model"
    model.write_bytes(b"not read")
    with confined_to([inside]), pytest.raises(OutsideRootsError) as info:
        load_tokenizer(inside / "mlm", tokenizer_type="GPTSentencePieceTokenizer", tokenizer_model=str(model))
    assert info.value.path == str(model)


def test_a_hugging_face_directory_is_checked_file_by_file(roots):
    from megaload.checkpoint import CorruptCheckpointError
    from megaload.checkpoint._files import TOKENIZER_CONFIG_LIMIT

    inside, outside = roots
    hf = inside / "hf_tok"
    hf.mkdir()
    (outside / "tokenizer.json").write_text("{}")
    (hf / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    with confined_to([inside]), pytest.raises(OutsideRootsError) as info:
        load_tokenizer(inside / "mlm", tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf))
    assert info.value.path == str(hf / "tokenizer.json")
    (hf / "tokenizer.json").unlink()
    config = hf / "tokenizer_config.json"
    config.touch()
    os.truncate(config, TOKENIZER_CONFIG_LIMIT + 1)  # sparse: the size is what counts
    with pytest.raises(CorruptCheckpointError, match=f"limit .* is {TOKENIZER_CONFIG_LIMIT} bytes"):
        load_tokenizer(inside / "mlm", tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf))
