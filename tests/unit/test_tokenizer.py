"""load_tokenizer on copies of the real fixture checkpoints, with tokenizer files built here.

Expected ids come from the files as written (hand-made GPT-2 style vocab and merges, a
SentencePiece model trained with fixed special ids), never from the code under test.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megaload.checkpoint._errors import (
    CheckpointNotFoundError,
    IncompatibleConfigError,
    TokenizerError,
    UnsupportedCheckpointError,
)
from megaload.checkpoint._tokenizer import load_tokenizer, read_tokenizer_config
from megaload.checkpoint._tokenizer_config import TokenizerConfig
from megaload.checkpoint._tokenizer_types import MegatronTokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BRIDGE = FIXTURES / "bridge_gpt_tied_rope_fp32" / "checkpoint"
MLM = FIXTURES / "mlm_gpt" / "checkpoint"

# ---------------------------------------------------------------------------------------------
# Tokenizer files, built by hand.


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes stand for themselves,
    the others take code points 256, 257, ... in byte order."""
    kept = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    table, extra = {}, 0
    for b in range(256):
        if b in kept:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE = _byte_alphabet()
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d")]
# Byte b has id b; merged pieces follow in merge order; then <|endoftext|>.
VOCAB = {BYTE[b]: b for b in range(256)}
for _a, _b in MERGES:
    VOCAB[_a + _b] = len(VOCAB)
EOT = VOCAB["<|endoftext|>"] = len(VOCAB)
HELLO_WORLD_IDS = [VOCAB["hello"], VOCAB["Ġwor"], VOCAB["ld"]]  # "hello" | " wor" | "ld"
BOS, EOS, PAD = EOT + 1, EOT + 2, EOT + 3  # the Hugging Face tokenizer's special tokens


def write_gpt2_files(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.json"
    merges = directory / "merges.txt"
    vocab.write_text(json.dumps(VOCAB), encoding="utf-8")
    merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    return vocab, merges


def write_hf_dir(directory: Path, *, bos_template: bool = False) -> Path:
    """The same BPE as a Hugging Face tokenizer with <s>, </s>, <pad> (ids BOS, EOS, PAD);
    with ``bos_template`` its post-processor puts <s> before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = dict(VOCAB, **{"<s>": BOS, "</s>": EOS, "<pad>": PAD})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(str(directory))
    return directory


SP_SENTENCES = [
    "hello world this is a small test of a sentence piece model",
    "megatron loads checkpoints written by many ranks",
    "the quick brown fox jumps over the lazy dog",
    "tokenizers turn text into ids and ids back into text",
    "a checkpoint moves from one cluster to another cluster",
] * 4
SP_UNK, SP_BOS, SP_EOS, SP_PAD = 0, 1, 2, 3


def write_sp_model(path: Path) -> Path:
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_SENTENCES), model_writer=model, vocab_size=120, model_type="bpe",
        unk_id=SP_UNK, bos_id=SP_BOS, eos_id=SP_EOS, pad_id=SP_PAD, character_coverage=1.0,
        num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizer-assets")
    vocab, merges = write_gpt2_files(root / "gpt2")
    return {
        "vocab": vocab,
        "merges": merges,
        "hf": write_hf_dir(root / "hf"),
        "hf_bos": write_hf_dir(root / "hf_bos", bos_template=True),
        "sp": write_sp_model(root / "sp" / "tokenizer.model"),
    }


# ---------------------------------------------------------------------------------------------
# Checkpoint copies.


def bridge_copy(tmp_path: Path, section: dict | None) -> Path:
    """A copy of the Bridge fixture whose run_config.yaml has ``tokenizer: section``; returns
    the save directory."""
    save_dir = tmp_path / "bridge"
    shutil.copytree(BRIDGE, save_dir)
    run_config = save_dir / "iter_0000000" / "run_config.yaml"
    data = yaml.safe_load(run_config.read_text())
    data["tokenizer"] = None if section is None else {
        "_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig", **section
    }
    run_config.write_text(yaml.safe_dump(data))
    return save_dir


def mlm_copy(tmp_path: Path, **args) -> Path:
    """A copy of the Megatron-LM fixture with ``args`` fields replaced in common.pt."""
    import torch

    from megaload.checkpoint._pickle import load_common_state_dict

    save_dir = tmp_path / "mlm"
    shutil.copytree(MLM, save_dir)
    iter_dir = save_dir / "iter_0000010"
    state = load_common_state_dict(iter_dir)
    for name, value in args.items():
        setattr(state["args"], name, value)
    torch.save(state, iter_dir / "common.pt")
    return save_dir


def bundle(save_dir: Path, *files: Path) -> Path:
    """Copy files (or a directory's files) into the checkpoint's tokenizer/ dir, as Bridge does."""
    iter_dir = next(save_dir.glob("iter_*"))
    target = iter_dir / "tokenizer"
    target.mkdir(exist_ok=True)
    for f in files:
        for src in (sorted(f.iterdir()) if f.is_dir() else [f]):
            shutil.copy2(src, target / src.name)
    return target


LOST_PATH = {"_target_": "pathlib.PosixPath", "_call_": True}  # how Bridge's YAML dumper writes a Path
GONE = "/nonexistent-cluster/old/tokenizer"

# ---------------------------------------------------------------------------------------------
# NullTokenizer, overrides, errors.


def test_mlm_fixture_null_tokenizer_vocab_size_override(tmp_path):
    tok = load_tokenizer(MLM / "iter_0000010", vocab_size=300)
    assert isinstance(tok, MegatronTokenizer)
    assert (tok.tokenizer_type, tok.vocab_size, tok.eod) == ("NullTokenizer", 300, 299)
    assert tok.special_ids == {"eod": 299}
    assert tok.tokenize("7 8 9") == [7, 8, 9]
    assert tok.detokenize([7, 8, 9]) == "7 8 9"
    for name in ("pad", "bos", "eos", "unk", "mask", "cls", "sep", "pad_id"):
        with pytest.raises(AttributeError, match=name.removesuffix("_id")):
            getattr(tok, name)
        assert getattr(tok, name, None) is None


def test_bridge_null_tokenizer_section_is_an_error_naming_the_path():
    with pytest.raises(TokenizerError, match="records no tokenizer") as info:
        load_tokenizer(BRIDGE)
    assert info.value.path.endswith("iter_0000000")
    assert "iter_0000000" in str(info.value) and "tokenizer: null" in str(info.value)


def test_overrides_supply_a_tokenizer_for_a_checkpoint_that_records_none():
    tok = load_tokenizer(BRIDGE, tokenizer_type="NullTokenizer", vocab_size=256)
    assert (tok.vocab_size, tok.eod, tok.tokenize("1 255")) == (256, 255, [1, 255])
    with pytest.raises(TokenizerError, match="vocab_size"):
        load_tokenizer(BRIDGE, tokenizer_type="NullTokenizer")


def test_unknown_override_field_is_named():
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(MLM, vocab_sise=3)
    assert info.value.field == "vocab_sise"
    assert "vocab_sise" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_badly_typed_override_is_named():
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(MLM, vocab_size="many")
    assert info.value.field == "vocab_size"


def test_unknown_and_unsupported_tokenizer_types_are_named(tmp_path):
    with pytest.raises(TokenizerError, match="FancyTokenizer"):
        load_tokenizer(MLM, tokenizer_type="FancyTokenizer")
    with pytest.raises(UnsupportedCheckpointError, match="TikTokenizer"):
        load_tokenizer(MLM, tokenizer_type="TikTokenizer")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        load_tokenizer(tmp_path / "nothing-here")


def test_overrides_do_not_change_what_is_read_next():
    assert read_tokenizer_config(MLM, vocab_size=5).vocab_size == 5
    assert read_tokenizer_config(MLM).vocab_size == 200


def test_null_tokenizer_refuses_text():
    tok = load_tokenizer(MLM)
    with pytest.raises(ValueError, match="'Hello'"):
        tok.tokenize("Hello world")
    with pytest.raises(TypeError):
        tok.tokenize(b"1 2")


# ---------------------------------------------------------------------------------------------
# GPT2BPETokenizer.


def test_gpt2_bpe_from_recorded_paths(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": str(assets["vocab"]),
                                      "merge_file": str(assets["merges"])})
    tok = load_tokenizer(save_dir)
    assert tok.tokenize("hello world") == HELLO_WORLD_IDS
    assert (tok.vocab_size, tok.eod, tok.eos) == (len(VOCAB), EOT, EOT)
    # No merge applies inside "<|endoftext|>": one id per byte, not the eod id.
    assert tok.tokenize("<|endoftext|>") == list(b"<|endoftext|>")
    assert tok.tokenize("é") == list("é".encode())
    for text in ("hello world", "Héllo, wörld!\n\t 123 <|endoftext|> 日本"):
        assert tok.detokenize(tok.tokenize(text)) == text
    assert tok.detokenize([*HELLO_WORLD_IDS, EOT]) == "hello world<|endoftext|>"
    with pytest.raises(ValueError, match=str(len(VOCAB))):
        tok.detokenize([len(VOCAB)])
    with pytest.raises(AttributeError):
        tok.pad


def test_gpt2_bpe_moved_paths_fall_back_to_bundled_files(tmp_path, assets, caplog):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": f"{GONE}/vocab.json",
                                      "merge_file": f"{GONE}/merges.txt"})
    bundled = bundle(save_dir, assets["vocab"], assets["merges"])
    tok = load_tokenizer(save_dir)
    assert tok.tokenize("hello world") == HELLO_WORLD_IDS
    assert tok.vocab_file == bundled / "vocab.json"
    assert GONE in caplog.text


def test_gpt2_bpe_missing_everywhere_names_both_places(tmp_path):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": f"{GONE}/vocab.json",
                                      "merge_file": f"{GONE}/merges.txt"})
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(save_dir)
    message = str(info.value)
    assert f"{GONE}/vocab.json" in message
    assert str(save_dir / "iter_0000000" / "tokenizer" / "vocab.json") in message


def test_overridden_path_is_used_as_given_without_fallback(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": f"{GONE}/vocab.json",
                                      "merge_file": f"{GONE}/merges.txt"})
    bundle(save_dir, assets["vocab"], assets["merges"])
    with pytest.raises(TokenizerError, match="elsewhere/vocab.json"):
        load_tokenizer(save_dir, vocab_file=str(tmp_path / "elsewhere" / "vocab.json"))
    tok = load_tokenizer(save_dir, vocab_file=str(assets["vocab"]), merge_file=str(assets["merges"]))
    assert tok.vocab_file == assets["vocab"]


def test_megatron_lm_args_gpt2_bpe(tmp_path, assets):
    save_dir = mlm_copy(tmp_path, tokenizer_type="GPT2BPETokenizer", vocab_file=str(assets["vocab"]),
                        merge_file=str(assets["merges"]))
    tok = load_tokenizer(save_dir)
    assert (tok.tokenizer_type, tok.tokenize("hello world")) == ("GPT2BPETokenizer", HELLO_WORLD_IDS)


# ---------------------------------------------------------------------------------------------
# SentencePiece.


def test_sentencepiece_lost_path_uses_bundled_model(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": LOST_PATH})
    bundle(save_dir, assets["sp"])
    tok = load_tokenizer(save_dir)
    assert tok.special_ids == {"eod": SP_EOS, "bos": SP_BOS, "eos": SP_EOS, "pad": SP_PAD, "unk": SP_UNK}
    ids = tok.tokenize("hello world")
    assert ids and not {SP_BOS, SP_EOS} & set(ids)
    for text in ("hello world", "the lazy fox moves checkpoints"):
        assert tok.detokenize(tok.tokenize(text)) == text
    with pytest.raises(AttributeError):
        tok.mask


def test_sentencepiece_without_any_model_is_an_error(tmp_path):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": LOST_PATH})
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer(save_dir)


def test_sentencepiece_legacy_adds_megatron_special_tokens(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer", "legacy_tokenizer": True,
                                      "vocab_extra_ids": 2, "tokenizer_model": str(assets["sp"])})
    tok = load_tokenizer(save_dir)
    plain = load_tokenizer(save_dir, legacy_tokenizer=False)
    n = plain.vocab_size
    # <CLS> <SEP> <EOD> <MASK> come after the model's pieces; pad/bos/eos are the model's own
    # pieces; then <extra_id_0>, <extra_id_1>.
    assert (tok.cls, tok.sep, tok.eod, tok.mask) == (n, n + 1, n + 2, n + 3)
    assert (tok.pad, tok.bos, tok.eos) == (SP_PAD, SP_BOS, SP_EOS)
    assert tok.vocab_size == n + 6
    ids = tok.tokenize("hello world<EOD>the fox<extra_id_1>")
    assert ids == plain.tokenize("hello world") + [n + 2] + plain.tokenize("the fox") + [n + 5]
    assert tok.detokenize(plain.tokenize("hello") + [n + 2]) == "hello <EOD> "


def test_llama2_and_gpt_sentencepiece_legacy(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "Llama2Tokenizer", "legacy_tokenizer": True,
                                      "tokenizer_model": str(assets["sp"])})
    plain = load_tokenizer(save_dir, legacy_tokenizer=False).tokenize("hello world")
    assert load_tokenizer(save_dir).tokenize("hello world") == [SP_BOS, *plain]
    gpt = load_tokenizer(save_dir, tokenizer_type="GPTSentencePieceTokenizer")
    assert (gpt.tokenize("hello world"), gpt.eod) == (plain, SP_EOS)


def test_sentencepiece_extra_whitespace_option(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer",
                                      "tokenizer_model": str(assets["sp"])})
    collapsing = load_tokenizer(save_dir)
    assert collapsing.tokenize("hello  world") == collapsing.tokenize("hello world")
    keeping = load_tokenizer(save_dir, sp_tokenizer_kwargs={"ignore_extra_whitespaces": False})
    assert keeping.tokenize("hello world") == collapsing.tokenize("hello world")
    assert keeping.tokenize("hello  world") != keeping.tokenize("hello world")


def test_sentencepiece_special_tokens_need_legacy(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer",
                                      "tokenizer_model": str(assets["sp"]), "special_tokens": ["<tool>"]})
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(save_dir)
    assert info.value.field == "special_tokens"
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(save_dir, special_tokens=None, sp_tokenizer_kwargs={"bogus": 1})
    assert info.value.field == "sp_tokenizer_kwargs.bogus"


# ---------------------------------------------------------------------------------------------
# HuggingFaceTokenizer.


def test_hf_bundled_directory_when_path_was_lost(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": LOST_PATH})
    bundled = bundle(save_dir, assets["hf_bos"])
    tok = load_tokenizer(save_dir)
    assert tok.source == bundled
    # Default (non-legacy) behaviour: the text's own tokens, no template BOS; specials dropped
    # on the way back; sep/cls stand in for eos/bos.
    assert tok.tokenize("hello world") == HELLO_WORLD_IDS
    assert tok.detokenize([BOS, *HELLO_WORLD_IDS, EOS, PAD]) == "hello world"
    assert tok.special_ids == {"eod": EOS, "bos": BOS, "eos": EOS, "pad": PAD, "cls": BOS, "sep": EOS}
    assert tok.vocab_size == len(VOCAB) + 3
    with pytest.raises(AttributeError):
        tok.unk


def test_hf_legacy_and_include_special_tokens_use_the_template(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": f"{GONE}/hf",
                                      "legacy_tokenizer": True})
    bundle(save_dir, assets["hf_bos"])
    legacy = load_tokenizer(save_dir)
    assert legacy.tokenize("hello world") == [BOS, *HELLO_WORLD_IDS]
    assert legacy.detokenize([BOS, *HELLO_WORLD_IDS]) == "<s>hello world"
    with_special = load_tokenizer(save_dir, legacy_tokenizer=False,
                                  hf_tokenizer_kwargs={"include_special_tokens": True})
    assert with_special.tokenize("hello world") == [BOS, *HELLO_WORLD_IDS]


def test_hf_from_megatron_lm_args(tmp_path, assets):
    save_dir = mlm_copy(tmp_path, tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(assets["hf_bos"]),
                        tokenizer_hf_include_special_tokens=True, tokenizer_hf_use_fast=True)
    tok = load_tokenizer(save_dir)
    assert tok.tokenize("hello world") == [BOS, *HELLO_WORLD_IDS]
    assert read_tokenizer_config(save_dir).hf_tokenizer_kwargs["use_fast"] is True


def test_hf_hub_name_without_files_fails_offline(tmp_path):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer",
                                      "tokenizer_model": "megaload-test-org/no-such-model"})
    with pytest.raises(TokenizerError, match="megaload-test-org/no-such-model"):
        load_tokenizer(save_dir)


def test_hf_missing_everything_names_the_bundled_dir(tmp_path):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": f"{GONE}/hf"})
    with pytest.raises(TokenizerError) as info:
        load_tokenizer(save_dir)
    assert GONE in str(info.value) and str(save_dir / "iter_0000000" / "tokenizer") in str(info.value)


def test_hf_unknown_kwarg_is_refused_by_name(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(assets["hf"]),
                                      "hf_tokenizer_kwargs": {"revision": "main"}})
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(save_dir)
    assert info.value.field == "hf_tokenizer_kwargs.revision"


def _write_custom_code(directory: Path) -> None:
    (directory / "custom_tok.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n"
        "class MegaloadTestTokenizer(PreTrainedTokenizerFast):\n"
        "    marker = 'custom code ran'\n"
    )
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "MegaloadTestTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "custom_tok.MegaloadTestTokenizer"]}
    config_file.write_text(json.dumps(config))


def test_trust_remote_code_recorded_in_checkpoint_is_refused(tmp_path, assets, monkeypatch):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": LOST_PATH,
                                      "hf_tokenizer_kwargs": {"trust_remote_code": True, "use_fast": True}})
    bundled = bundle(save_dir, assets["hf"])
    _write_custom_code(bundled)
    with pytest.raises(TokenizerError, match="trust_remote_code") as info:
        load_tokenizer(save_dir)
    assert "tokenizer_config.json" in str(info.value)

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"), raising=False)
    tok = load_tokenizer(save_dir, trust_remote_code=True)
    assert tok.hf_tokenizer.marker == "custom code ran"
    assert tok.tokenize("hello world") == HELLO_WORLD_IDS


def test_recorded_trust_remote_code_is_ignored_for_a_plain_tokenizer(tmp_path, assets):
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(assets["hf"]),
                                      "hf_tokenizer_kwargs": {"trust_remote_code": True}})
    assert load_tokenizer(save_dir).tokenize("hello world") == HELLO_WORLD_IDS


def test_yaml_objects_are_never_instantiated(tmp_path):
    marker = tmp_path / "pwned"
    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": {
        "_target_": "os.system", "_args_": [f"touch {marker}"], "_call_": True}})
    with pytest.raises(IncompatibleConfigError) as info:
        load_tokenizer(save_dir)
    assert info.value.field == "tokenizer_model"
    assert not marker.exists()


def test_run_config_section_round_trips():
    config = TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model="/x/tok",
                             hf_tokenizer_kwargs={"use_fast": True})
    section = config.to_run_config_section()
    assert section["_target_"] == "megatron.bridge.training.tokenizers.config.TokenizerConfig"
    from megaload.checkpoint._tokenizer_config import config_from_bridge_section

    assert config_from_bridge_section(yaml.safe_load(yaml.safe_dump(section)), path=Path("x")) == config


def test_importing_the_library_loads_no_tokenizer_backend():
    code = (
        "import sys, megaload.checkpoint, megaload.checkpoint._tokenizer\n"
        "print(sorted(m for m in ('transformers', 'tokenizers', 'sentencepiece') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# Bundling files for a save.


def test_bundle_files_under_bridge_names_then_load_after_a_move(tmp_path, assets):
    from megaload.checkpoint._tokenizer import bundle_tokenizer_files

    # The source records paths that are gone and bundles its own copy; the SentencePiece model
    # was recorded under another file name.
    spm = tmp_path / "elsewhere" / "spm.model"
    spm.parent.mkdir()
    shutil.copy2(assets["sp"], spm)
    for section, files, names in (
        ({"tokenizer_type": "GPT2BPETokenizer", "vocab_file": f"{GONE}/v.json", "merge_file": f"{GONE}/m.txt"},
         (assets["vocab"], assets["merges"]), ["merges.txt", "vocab.json"]),
        ({"tokenizer_type": "Llama2Tokenizer", "tokenizer_model": str(spm)}, (), ["tokenizer.model"]),
        ({"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": LOST_PATH}, (assets["hf"],), None),
    ):
        case = tmp_path / section["tokenizer_type"]
        case.mkdir()
        source_dir = bridge_copy(case, section)
        if files:
            bundle(source_dir, *files)
        source_iter = source_dir / "iter_0000000"
        config = read_tokenizer_config(source_iter)
        before = load_tokenizer(source_dir).tokenize("hello world")

        # A new checkpoint whose section has lost every path: only the bundled files can serve.
        target_dir = bridge_copy(case / "target", {**section, "vocab_file": None, "merge_file": None,
                                                   "tokenizer_model": LOST_PATH})
        written = bundle_tokenizer_files(config, target_dir / "iter_0000000" / "tokenizer", iter_dir=source_iter)
        if names is not None:
            assert sorted(p.name for p in written) == names
        assert load_tokenizer(target_dir).tokenize("hello world") == before


def test_bundle_files_of_a_null_tokenizer_is_nothing(tmp_path):
    from megaload.checkpoint._tokenizer import bundle_tokenizer_files

    assert bundle_tokenizer_files(read_tokenizer_config(MLM), tmp_path / "tok", iter_dir=MLM / "iter_0000010") == []
    assert not (tmp_path / "tok").exists()


# ---------------------------------------------------------------------------------------------
# tokenizer_files: what a Hugging Face directory of the checkpoint would hold.


def test_tokenizer_files_of_a_bundled_hf_tokenizer_are_its_tokenizer_files_only(tmp_path, assets):
    from megaload.checkpoint import tokenizer_files

    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": GONE})
    bundled = bundle(save_dir, assets["hf"])
    (bundled / "model.safetensors").write_bytes(b"not a tokenizer file")
    (bundled / "config.json").write_text("{}")
    files = tokenizer_files(save_dir)
    written = {p.name for p in assets["hf"].iterdir()}
    assert set(files) == written and "tokenizer.json" in files
    assert all(path == bundled / name for name, path in files.items())


def test_tokenizer_files_of_bpe_and_sentencepiece_use_hf_names(tmp_path, assets):
    from megaload.checkpoint import tokenizer_files

    save_dir = bridge_copy(tmp_path, {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": str(assets["vocab"]),
                                      "merge_file": str(assets["merges"])})
    assert tokenizer_files(save_dir) == {"vocab.json": assets["vocab"], "merges.txt": assets["merges"]}
    sp_dir = tmp_path / "sp"
    sp_dir.mkdir()
    save_dir = bridge_copy(sp_dir, {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": LOST_PATH})
    bundled = bundle(save_dir, assets["sp"])
    assert tokenizer_files(save_dir) == {"tokenizer.model": bundled / "tokenizer.model"}


def test_tokenizer_files_of_null_and_missing_tokenizers():
    from megaload.checkpoint import tokenizer_files

    assert tokenizer_files(MLM) == {}
    with pytest.raises(TokenizerError, match="records no tokenizer"):
        tokenizer_files(BRIDGE)
