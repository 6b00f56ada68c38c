"""Files named from inside a checkpoint obey the path policy too.

The request's path is policed before anything is read (test_paths_api.py); here the
checkpoint itself lies inside a root but points elsewhere: a data file, ``.metadata``,
``common.pt`` or ``metadata.json`` that is a symlink to a file outside the roots, and a run
config whose tokenizer section names vocabulary files outside the roots. Each is answered
403 ``forbidden-path`` naming the file (or, for a tokenizer file recorded in the
checkpoint, the copy bundled with the checkpoint is used instead), no byte of the outside
file reaches a response, and a save does not copy it into the save root.

The outside files are real (a copy of a fixture's data file, GPT-2 vocabulary files written
here) so that, before the check existed, the load succeeded and the tokenizer was built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from megaload_client import problems

BRIDGE = "bridge_gpt_tied_rope_fp32"


def _gpt2_files(directory: Path, extra_tokens: int) -> tuple[Path, Path]:
    """A byte-level GPT-2 vocabulary (256 bytes, ``he``, ``extra_tokens`` filler tokens and
    ``<|endoftext|>``) and a merges file with one merge. ``extra_tokens`` tells copies apart
    by their vocabulary size."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in kept:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    vocab = {table[b]: b for b in range(256)}
    vocab["he"] = len(vocab)
    for i in range(extra_tokens):
        vocab[f"<filler_{i}>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\nh e\n", encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


OUTSIDE_VOCAB_SIZE = 258 + 40
BUNDLED_VOCAB_SIZE = 258 + 3


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A directory outside every root, holding GPT-2 vocabulary files."""
    out = tmp_path_factory.mktemp("outside_files")
    _gpt2_files(out / "tok", OUTSIDE_VOCAB_SIZE - 258)
    return out


def _iter_dir(root: Path) -> Path:
    return next(root.glob("iter_*"))


def _with_gpt2_tokenizer(service, copy_checkpoint, name: str, vocab: Path, merges: Path, *, bundled: bool) -> Path:
    """A copy of the Bridge fixture whose run config names a GPT-2 tokenizer at ``vocab`` /
    ``merges`` (absolute paths), with or without a bundled copy in ``tokenizer/``."""
    dest = service.ckpt_root / name
    if dest.exists():
        shutil.rmtree(dest)
    copy_checkpoint(BRIDGE, dest)
    iter_dir = _iter_dir(dest)
    run_config_path = iter_dir / "run_config.yaml"
    run_config = yaml.safe_load(run_config_path.read_text())
    run_config["tokenizer"] = {
        "_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig",
        "tokenizer_type": "GPT2BPETokenizer",
        "vocab_file": str(vocab),
        "merge_file": str(merges),
        "legacy_tokenizer": True,
    }
    run_config_path.write_text(yaml.safe_dump(run_config, sort_keys=False))
    if bundled:
        _gpt2_files(iter_dir / "tokenizer", BUNDLED_VOCAB_SIZE - 258)
    return dest


def _assert_forbidden(r, *, names: str) -> dict:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == problems.FORBIDDEN_PATH, body
    assert names in body["detail"], body
    return body


@pytest.mark.parametrize("member", ["__0_0.distcp", ".metadata", "common.pt", "metadata.json"])
def test_a_checkpoint_file_linked_outside_the_roots_is_refused(service, copy_checkpoint, tmp_path, member):
    name = f"mlm_link_{member.strip('._').replace('.', '_')}"
    dest = copy_checkpoint("mlm_gpt", service.ckpt_root / name)
    iter_dir = _iter_dir(dest)
    moved = tmp_path / member
    shutil.move(iter_dir / member, moved)
    (iter_dir / member).symlink_to(moved)
    before = service.metric("megaload_checkpoint_loads_total", outcome="success")
    r = service.load(name)
    body = _assert_forbidden(r, names=member)
    assert body["path"].endswith(member)
    assert service.metric("megaload_checkpoint_loads_total", outcome="success") == before
    assert not [m for m in service.client.get("/v1/models").json()["models"] if m["checkpoint_path"] == name]
    # the same file through the routes that read without loading (the tokenizer of a
    # Megatron-LM checkpoint comes from common.pt)
    reads = {
        ".metadata": [("/v1/checkpoints/tensors", {})],
        "common.pt": [("/v1/checkpoints/config", {}), ("/v1/checkpoints/tokenizer", {})],
        "metadata.json": [("/v1/checkpoints/tensors", {}), ("/v1/checkpoints/config", {})],
        "__0_0.distcp": [],
    }[member]
    for route, params in reads:
        _assert_forbidden(service.client.get(route, params={"path": name, **params}), names=member)
    # a link that stays inside the roots is fine
    inside = service.ckpt_root / f"{name}_target"
    shutil.copyfile(moved, inside)
    (iter_dir / member).unlink()
    (iter_dir / member).symlink_to(inside)
    assert service.load(name).status_code == 201


def test_tokenizer_files_outside_the_roots_are_never_read(service, copy_checkpoint, outside):
    vocab, merges = outside / "tok" / "vocab.json", outside / "tok" / "merges.txt"
    name = "bridge_tok_outside"
    _with_gpt2_tokenizer(service, copy_checkpoint, name, vocab, merges, bundled=False)
    r = service.client.get("/v1/checkpoints/tokenizer", params={"path": name})
    body = _assert_forbidden(r, names=str(vocab))
    assert body["path"] == str(vocab)
    r = service.client.post("/v1/checkpoints/tokenize", json={"path": name, "text": "hello"})
    _assert_forbidden(r, names=str(vocab))
    # a symlink inside the checkpoint's own tokenizer/ directory pointing outside: the same
    linked = "bridge_tok_linked"
    dest = _with_gpt2_tokenizer(service, copy_checkpoint, linked, Path("/nonexistent/vocab.json"),
                                Path("/nonexistent/merges.txt"), bundled=True)
    (_iter_dir(dest) / "tokenizer" / "vocab.json").unlink()
    (_iter_dir(dest) / "tokenizer" / "vocab.json").symlink_to(vocab)
    _assert_forbidden(service.client.get("/v1/checkpoints/tokenizer", params={"path": linked}), names="vocab.json")


def test_recorded_tokenizer_files_outside_the_roots_fall_back_to_the_bundled_copy(service, copy_checkpoint, outside):
    vocab, merges = outside / "tok" / "vocab.json", outside / "tok" / "merges.txt"
    name = "bridge_tok_outside_bundled"
    _with_gpt2_tokenizer(service, copy_checkpoint, name, vocab, merges, bundled=True)
    r = service.client.get("/v1/checkpoints/tokenizer", params={"path": name})
    assert r.status_code == 200, r.text
    assert r.json()["vocab_size"] == BUNDLED_VOCAB_SIZE  # the outside copy has OUTSIDE_VOCAB_SIZE


def test_a_save_does_not_copy_tokenizer_files_from_outside_the_roots(service, copy_checkpoint, outside):
    vocab, merges = outside / "tok" / "vocab.json", outside / "tok" / "merges.txt"
    name = "bridge_tok_outside_save"
    _with_gpt2_tokenizer(service, copy_checkpoint, name, vocab, merges, bundled=False)
    model = service.load(name)
    assert model.status_code == 201, model.text
    r = service.client.post(f"/v1/models/{model.json()['id']}/save", json={"path": "tok_outside_saved"})
    assert r.status_code == 202, r.text
    done = service.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done
    saved = _iter_dir(service.save_root / "tok_outside_saved")
    copied = [p for p in saved.rglob("*") if p.is_file() and p.read_bytes() == vocab.read_bytes()]
    assert copied == [], copied
    assert not (saved / "tokenizer" / "vocab.json").exists()
