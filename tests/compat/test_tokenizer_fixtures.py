"""load_tokenizer against upstream.

- The fixtures' references (written by the real Megatron Bridge 0.3.1 ``load_tokenizer``).
- megatron-core's tokenizer library (installed with megatron-core), which is what Bridge's
  default (non-legacy) path builds: each tokenizer here is built both ways from the same files,
  with the arguments Bridge derives from the same settings, and must agree id for id.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from megaload.checkpoint._errors import TokenizerError
from megaload.checkpoint._tokenizer import load_tokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLM = FIXTURES / "mlm_gpt"
BRIDGE = FIXTURES / "bridge_gpt_tied_rope_fp32"

TEXTS = [
    "Hello world, this is a test.",
    "the quick brown fox jumps over the lazy dog",
    "checkpoints  move   between clusters\tand\nlines",
    " leading and trailing spaces ",
    "unseen characters: Ωμέγα 日本語 ☃ 🙂",
    "",
]


def _upstream(tokenizer_path: str | None, library: str, **kwargs):
    from megatron.core.tokenizers import MegatronTokenizer as UpstreamTokenizer

    return UpstreamTokenizer.from_pretrained(tokenizer_path=tokenizer_path, metadata_path={"library": library},
                                             **kwargs)


def _upstream_special(tok, name: str):
    try:
        value = getattr(tok, name)
    except (AttributeError, NameError):
        return None
    return None if value is None or value < 0 else value


def _ours_special(tok, name: str):
    return getattr(tok, name, None)


def _bridge_copy(tmp_path: Path, section: dict) -> Path:
    save_dir = tmp_path / "bridge"
    shutil.copytree(BRIDGE / "checkpoint", save_dir)
    run_config = save_dir / "iter_0000000" / "run_config.yaml"
    data = yaml.safe_load(run_config.read_text())
    data["tokenizer"] = {"_target_": "megatron.bridge.training.tokenizers.config.TokenizerConfig", **section}
    run_config.write_text(yaml.safe_dump(data))
    return save_dir


# ---------------------------------------------------------------------------------------------
# The fixtures' references.


def test_mlm_null_tokenizer_matches_bridge_reference():
    ref = json.loads((MLM / "reference_tokenizer.json").read_text())
    tok = load_tokenizer(MLM / "checkpoint" / "iter_0000010")
    assert tok.tokenizer_type == "NullTokenizer"
    assert tok.vocab_size == ref["vocab_size"]
    assert tok.eod == ref["eod"]
    assert tok.tokenize(ref["null_tokenizer_sentence"]) == ref["null_tokenizer_ids"]
    assert tok.detokenize(ref["null_tokenizer_ids"]) == ref["null_tokenizer_sentence"]
    error_type = ref["ids_error"].split(":")[0]
    assert error_type == "ValueError"
    with pytest.raises(ValueError):
        tok.tokenize(ref["sentence"])
    for name in ("pad", "bos", "eos"):
        assert "AttributeError" in ref[name]
        with pytest.raises(AttributeError):
            getattr(tok, name)


def test_bridge_fixture_without_tokenizer_fails_as_upstream_does():
    notes = json.loads((BRIDGE / "reference_notes.json").read_text())
    assert "load_tokenizer" in notes["errors"]  # upstream could not build one either
    with pytest.raises(TokenizerError, match="records no tokenizer"):
        load_tokenizer(BRIDGE / "checkpoint" / "iter_0000000")


# ---------------------------------------------------------------------------------------------
# megatron-core's tokenizer library on the same files.


def test_null_tokenizer_agrees_with_megatron_core():
    ours = load_tokenizer(MLM / "checkpoint")
    # Bridge passes vocab_size - 1 to the library's NullTokenizer.
    upstream = _upstream(None, "null", vocab_size=200 - 1)
    assert (ours.vocab_size, ours.eod) == (upstream.vocab_size, upstream.eod)
    assert ours.tokenize("0 5 199 7") == upstream.tokenize("0 5 199 7")
    assert ours.detokenize([0, 5, 199]) == upstream.detokenize([0, 5, 199])


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    import sentencepiece

    sentences = [t for t in TEXTS[:3] if t] + [
        "a tokenizer turns text into ids and ids back into text",
        "Megatron Bridge saves the tokenizer next to the weights",
    ] * 5
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=150, model_type="unigram",
        pad_id=3, character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


SPECIAL_NAMES = ("eod", "bos", "eos", "pad", "unk", "mask", "cls", "sep")


# With sp_tokenizer_kwargs.legacy and no special tokens, upstream's bos/eos/pad/eod raise
# AttributeError (it looks for token attributes that only added special tokens create); ours
# answer with the model's ids, so only unk is compared there.
@pytest.mark.parametrize(
    "sp_kwargs, compared",
    [({}, SPECIAL_NAMES), ({"ignore_extra_whitespaces": False}, SPECIAL_NAMES), ({"legacy": True}, ("unk",))],
)
def test_sentencepiece_agrees_with_megatron_core(tmp_path, sp_model, sp_kwargs, compared):
    save_dir = _bridge_copy(tmp_path, {"tokenizer_type": "GPTSentencePieceTokenizer",
                                       "tokenizer_model": "/gone/tokenizer.model", "sp_tokenizer_kwargs": sp_kwargs})
    (save_dir / "iter_0000000" / "tokenizer").mkdir()
    shutil.copy2(sp_model, save_dir / "iter_0000000" / "tokenizer" / "tokenizer.model")
    ours = load_tokenizer(save_dir)
    upstream = _upstream(str(sp_model), "sentencepiece", chat_template=None, special_tokens=None, **sp_kwargs)
    assert ours.vocab_size == upstream.vocab_size
    for name in compared:
        assert _ours_special(ours, name) == _upstream_special(upstream, name), name
    for text in TEXTS:
        ids = ours.tokenize(text)
        assert ids == upstream.tokenize(text), text
        assert ours.detokenize(ids) == upstream.detokenize(ids), text


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin|>", "<|end|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|end|>",
                                   pad_token="<|pad|>")
    directory = tmp_path_factory.mktemp("hf")
    fast.save_pretrained(str(directory))
    return directory


@pytest.mark.parametrize(
    "hf_kwargs, special_tokens",
    [({}, None), ({"include_special_tokens": True}, None), ({"use_fast": True}, ["<tool>", "<|end|>"])],
)
def test_huggingface_agrees_with_megatron_core(tmp_path, hf_dir, hf_kwargs, special_tokens):
    section = {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(hf_dir),
               "hf_tokenizer_kwargs": hf_kwargs, "special_tokens": special_tokens}
    ours = load_tokenizer(_bridge_copy(tmp_path, section))
    upstream = _upstream(str(hf_dir), "huggingface", chat_template=None, vocab_file=None, merges_file=None,
                         additional_special_tokens=special_tokens or [], **hf_kwargs)
    assert ours.vocab_size == upstream.vocab_size
    for name in SPECIAL_NAMES:
        assert _ours_special(ours, name) == _upstream_special(upstream, name), name
    for text in TEXTS + ["with <tool> and <|end|> inside"]:
        ids = ours.tokenize(text)
        assert ids == upstream.tokenize(text), text
        assert ours.detokenize(ids) == upstream.detokenize(ids), text


# ---------------------------------------------------------------------------------------------
# Checkpoints imported from Hugging Face models: the recorded tokenizer path is gone (upstream's own
# load_tokenizer fails, see reference_notes.json) and the tokenizer bundled in the checkpoint is
# used. Checked against megatron-core's tokenizer library on the same bundled files with the
# checkpoint's settings (what upstream builds when the path exists), and against the original
# model's tokenizer (the fixture's hf/ copy, transformers) on plain text and special ids. (On
# whitespace runs and control characters the bundled copy tokenizes differently from the
# original under transformers 5: Bridge's save adds cls/sep tokens to tokenizer_config.json.)

HF_IMPORTS = sorted(p.parent.parent.name for p in FIXTURES.glob("*/hf/config.json"))


@pytest.mark.parametrize("name", HF_IMPORTS)
def test_hf_import_tokenizer_is_the_bundled_one(name):
    from transformers import AutoTokenizer

    iter_dir = next((FIXTURES / name / "checkpoint").glob("iter_*"))
    section = yaml.safe_load((iter_dir / "run_config.yaml").read_text())["tokenizer"]
    assert section["tokenizer_type"] == "HuggingFaceTokenizer" and not Path(section["tokenizer_model"]).exists()
    tok = load_tokenizer(FIXTURES / name / "checkpoint")
    upstream = _upstream(str(iter_dir / "tokenizer"), "huggingface", chat_template=section["chat_template"],
                         vocab_file=None, merges_file=None, additional_special_tokens=section["special_tokens"] or [],
                         **section["hf_tokenizer_kwargs"])
    assert tok.vocab_size == upstream.vocab_size
    for special in SPECIAL_NAMES:
        assert _ours_special(tok, special) == _upstream_special(upstream, special), special
    for text in TEXTS:
        ids = tok.tokenize(text)
        assert ids == upstream.tokenize(text), text
        assert tok.detokenize(ids) == upstream.detokenize(ids), text
    original = AutoTokenizer.from_pretrained(str(FIXTURES / name / "hf"))
    assert tok.vocab_size == len(original)
    for text in TEXTS[:2]:
        assert tok.tokenize(text) == original(text, add_special_tokens=False)["input_ids"], text
    for special in ("bos", "eos", "pad"):
        assert getattr(tok, f"{special}_id") == getattr(original, f"{special}_token_id"), special
