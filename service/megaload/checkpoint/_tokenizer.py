"""Building a checkpoint's tokenizer: :func:`load_tokenizer` and :func:`build_tokenizer`.

The call order is::

    load_tokenizer(path, **overrides)
      resolve_iteration_dir(path)                  save dir or iter dir -> iter dir
      recorded_tokenizer_config(iter_dir)          run_config.yaml "tokenizer:" or common.pt args
      apply_overrides(config, overrides)           a copy; unknown field -> IncompatibleConfigError
      build_tokenizer(config, iter_dir=...)        find the files, build the backend

Where the files come from (checkpoints move between clusters): a path the caller passed as
an override is used as given and must exist; a path recorded in the checkpoint is used when it
is absolute and exists here; otherwise the copy Bridge bundles in ``<iter_dir>/tokenizer/``
(``vocab.json``, ``merges.txt``, ``tokenizer.model``, or a Hugging Face directory) is used.
Upstream fails in that last case. A recorded Hugging Face hub name is looked up in the local
cache only when nothing is bundled. Nothing is downloaded, ever.

When reading is confined (:func:`~megaload.checkpoint.confined_to`), every tokenizer file
(and every file of a Hugging Face directory) must resolve inside the roots: a recorded path
outside them counts as absent here (the bundled copy is used, if there is one), anything else
outside them raises :class:`OutsideRootsError`.

Types built: ``NullTokenizer``, ``GPT2BPETokenizer``, ``SentencePieceTokenizer``,
``GPTSentencePieceTokenizer``, ``Llama2Tokenizer``, ``HuggingFaceTokenizer``. The other
Megatron types (BERT word-piece, TikToken, multimodal) raise
:class:`UnsupportedCheckpointError`; a name Megatron does not know raises
:class:`TokenizerError`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ._errors import (
    CheckpointError,
    IncompatibleConfigError,
    OutsideRootsError,
    TokenizerError,
    UnsupportedCheckpointError,
    summarize,
)
from ._files import TOKENIZER_CONFIG_LIMIT, check_allowed, read_json
from ._layout import COMMON_FILENAME, RUN_CONFIG_FILENAME, resolve_iteration_dir
from ._tokenizer_config import TokenizerConfig, apply_overrides, recorded_tokenizer_config
from ._tokenizer_files import cached_snapshot, hf_source, locate_file
from ._tokenizer_types import GPT2BPETokenizer, MegatronTokenizer, NullTokenizer

__all__ = [
    "load_tokenizer",
    "build_tokenizer",
    "read_tokenizer_config",
    "bundle_tokenizer_files",
    "tokenizer_files",
    "HF_TOKENIZER_FILENAMES",
    "SUPPORTED_TOKENIZER_TYPES",
]

logger = logging.getLogger(__name__)

_SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
SUPPORTED_TOKENIZER_TYPES = ("NullTokenizer", "GPT2BPETokenizer", *_SENTENCEPIECE_TYPES, "HuggingFaceTokenizer")
_UNSUPPORTED_TYPES = (
    "BertWordPieceLowerCase", "BertWordPieceCase", "TikTokenizer", "MultimodalTokenizer", "NullMultimodalTokenizer",
)
# megatron-core's tokenizer library each type goes through on Bridge's default path.
_LIBRARY_OF_TYPE = {"GPT2BPETokenizer": "megatron", "HuggingFaceTokenizer": "huggingface",
                    **{t: "sentencepiece" for t in _SENTENCEPIECE_TYPES}}
# The names Bridge's save_tokenizer_assets gives the files it copies into <iter_dir>/tokenizer/.
_BUNDLED_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "GPT2BPETokenizer": (("vocab_file", "vocab.json"), ("merge_file", "merges.txt")),
    **{t: (("tokenizer_model", "tokenizer.model"),) for t in _SENTENCEPIECE_TYPES},
}
_SP_KWARGS = frozenset({"legacy", "ignore_extra_whitespaces", "trim_spm_separator_after_special_token", "spm_separator"})
# The files of a Hugging Face tokenizer directory, as save_pretrained names them.
HF_TOKENIZER_FILENAMES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
    "chat_template.json",
)


def read_tokenizer_config(checkpoint_path: str | os.PathLike, **overrides: Any) -> TokenizerConfig:
    """The tokenizer settings of a checkpoint with ``overrides`` applied, without building
    anything. Raises TokenizerError when the checkpoint records none and the overrides do not
    name a ``tokenizer_type``."""
    iter_dir = resolve_iteration_dir(checkpoint_path)
    return _effective_config(iter_dir, overrides)


def _effective_config(iter_dir: Path, overrides: dict[str, Any]) -> TokenizerConfig:
    recorded = recorded_tokenizer_config(iter_dir)
    config = apply_overrides(recorded or TokenizerConfig(), overrides, path=iter_dir)
    if recorded is None and not config.tokenizer_type:
        where = (
            f"{RUN_CONFIG_FILENAME} has 'tokenizer: null'"
            if (iter_dir / RUN_CONFIG_FILENAME).is_file()
            else f"{COMMON_FILENAME} holds no args"
        )
        raise TokenizerError(
            f"checkpoint {iter_dir} records no tokenizer ({where}); pass tokenizer_type=... to "
            f"load_tokenizer, with vocab_size=... for a NullTokenizer or tokenizer_model=... for the others",
            path=iter_dir,
        )
    return config


def load_tokenizer(
    checkpoint_path: str | os.PathLike, *, trust_remote_code: bool = False, **overrides: Any
) -> MegatronTokenizer:
    """Build the tokenizer a checkpoint was trained with.

    ``checkpoint_path`` is a save directory or an ``iter_*`` directory, of Megatron Bridge or
    Megatron-LM. Keyword ``overrides`` replace :class:`TokenizerConfig` fields (an unknown name
    raises :class:`IncompatibleConfigError` naming it). ``trust_remote_code=True`` (or
    ``hf_tokenizer_kwargs={"trust_remote_code": True}``) lets a Hugging Face tokenizer run
    custom code from its files; a checkpoint asking for it is not enough.
    """
    from ._hf_dir import hf_model_dir

    hf_dir = hf_model_dir(checkpoint_path)
    if hf_dir is not None:  # a Hugging Face model directory: its own tokenizer files
        config = apply_overrides(TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(hf_dir)),
                                 overrides, path=hf_dir)
        allows = trust_remote_code or (
            "hf_tokenizer_kwargs" in overrides and config.hf_tokenizer_kwargs.get("trust_remote_code") is True
        )
        return build_tokenizer(config, iter_dir=None, given=frozenset(overrides) | {"tokenizer_model"},
                               trust_remote_code=allows)
    iter_dir = resolve_iteration_dir(checkpoint_path)
    config = _effective_config(iter_dir, overrides)
    caller_allows = trust_remote_code or (
        "hf_tokenizer_kwargs" in overrides and config.hf_tokenizer_kwargs.get("trust_remote_code") is True
    )
    return build_tokenizer(config, iter_dir=iter_dir, given=frozenset(overrides), trust_remote_code=caller_allows)


def build_tokenizer(
    config: TokenizerConfig,
    *,
    iter_dir: Path | None = None,
    given: frozenset[str] = frozenset(),
    trust_remote_code: bool = False,
) -> MegatronTokenizer:
    """Build a tokenizer from settings. ``iter_dir`` is where bundled files are looked for;
    ``given`` names the fields the caller set (their paths are used as given, no fallback).
    ``config.hf_tokenizer_kwargs["trust_remote_code"]`` is ignored: only the
    ``trust_remote_code`` argument allows custom code."""
    ttype = config.tokenizer_type
    where = iter_dir if iter_dir is not None else Path(".")
    if not ttype:
        raise TokenizerError(
            f"the tokenizer settings of {where} name no tokenizer_type; pass tokenizer_type=... to load_tokenizer",
            path=iter_dir,
        )
    special_tokens = config.special_tokens or config.tiktoken_special_tokens
    if ttype == "NullTokenizer":
        if not config.vocab_size:
            raise TokenizerError(
                f"a NullTokenizer needs vocab_size, and the tokenizer settings of {where} have none; "
                f"pass vocab_size=...",
                path=iter_dir,
            )
        return NullTokenizer(config.vocab_size, legacy=config.legacy_tokenizer)
    if ttype in _UNSUPPORTED_TYPES:
        raise UnsupportedCheckpointError(
            f"tokenizer type {summarize(ttype)} of {where} is not supported; supported: {', '.join(SUPPORTED_TOKENIZER_TYPES)}",
            path=iter_dir,
        )
    if ttype not in _LIBRARY_OF_TYPE:
        raise TokenizerError(
            f"unknown tokenizer type {summarize(ttype)} for {where}; supported: {', '.join(SUPPORTED_TOKENIZER_TYPES)}",
            path=iter_dir,
        )
    if not config.legacy_tokenizer:
        _check_metadata(config, ttype, where)
    if ttype == "GPT2BPETokenizer":
        vocab = locate_file(config, "vocab_file", "vocab.json", iter_dir, given)
        merges = locate_file(config, "merge_file", "merges.txt", iter_dir, given)
        return GPT2BPETokenizer(vocab, merges, legacy=config.legacy_tokenizer)
    if ttype in _SENTENCEPIECE_TYPES:
        return _build_sentencepiece(config, ttype, special_tokens, iter_dir, given, where)
    return _build_huggingface(config, special_tokens, iter_dir, given, where, trust_remote_code)


def _check_metadata(config: TokenizerConfig, ttype: str, where: Path) -> None:
    """megatron-core's tokenizer metadata may name another library or a custom class: honour
    neither silently."""
    metadata = config.metadata_path
    if not metadata:
        return
    if isinstance(metadata, str):
        meta_file = check_allowed(metadata, what=f"tokenizer metadata {metadata}")
        try:
            metadata = read_json(meta_file, TOKENIZER_CONFIG_LIMIT, what=str(metadata), kind="tokenizer metadata")
        except CheckpointError as e:
            if isinstance(e, OutsideRootsError):
                raise
            logger.warning("tokenizer metadata %s of %s cannot be read (%s); ignoring it", meta_file, where, e)
            return
    if not isinstance(metadata, dict):
        raise IncompatibleConfigError(f"tokenizer metadata of {where} should be a mapping", path=where,
                                      field="metadata_path")
    if metadata.get("tokenizer_class") or metadata.get("class_path"):
        raise UnsupportedCheckpointError(
            f"tokenizer metadata of {where} names a custom tokenizer class; megaload never imports classes "
            f"named in a checkpoint",
            path=where,
        )
    library = metadata.get("library")
    if library is not None and library != _LIBRARY_OF_TYPE[ttype]:
        raise UnsupportedCheckpointError(
            f"tokenizer metadata of {where} asks for library {summarize(library)} with tokenizer type {ttype!r}; "
            f"megaload builds {ttype} only with {_LIBRARY_OF_TYPE[ttype]!r}",
            path=where,
        )


def _build_sentencepiece(config: TokenizerConfig, ttype: str, special_tokens: Any, iter_dir: Path | None,
                         given: frozenset[str], where: Path) -> MegatronTokenizer:
    from ._tokenizer_sp import SentencePieceTokenizer

    model = locate_file(config, "tokenizer_model", "tokenizer.model", iter_dir, given)
    if config.legacy_tokenizer:
        return SentencePieceTokenizer(model, tokenizer_type=ttype, legacy=True,
                                      vocab_extra_ids=config.vocab_extra_ids)
    kwargs = config.sp_tokenizer_kwargs
    for key in kwargs:
        if key not in _SP_KWARGS:
            raise IncompatibleConfigError(
                f"sp_tokenizer_kwargs.{key} is not a SentencePiece option (known: {', '.join(sorted(_SP_KWARGS))})",
                path=where, field=f"sp_tokenizer_kwargs.{key}",
            )
    sp_legacy = bool(kwargs.get("legacy", False))
    if special_tokens and not sp_legacy:
        raise IncompatibleConfigError(
            f"special_tokens {summarize(special_tokens)} of {where} need sp_tokenizer_kwargs.legacy=true "
            f"(a non-legacy SentencePiece model carries its special tokens itself)",
            path=where, field="special_tokens",
        )
    if special_tokens:
        raise UnsupportedCheckpointError(
            f"SentencePiece special_tokens added at load time (sp_tokenizer_kwargs.legacy=true) are not "
            f"supported for {where}",
            path=where,
        )
    return SentencePieceTokenizer(
        model,
        tokenizer_type=ttype,
        ignore_extra_whitespaces=bool(kwargs.get("ignore_extra_whitespaces", True)),
        strip_decoded=sp_legacy,
    )


def _build_huggingface(config: TokenizerConfig, special_tokens: Any, iter_dir: Path | None, given: frozenset[str],
                       where: Path, trust_remote_code: bool) -> MegatronTokenizer:
    from ._tokenizer_hf import HuggingFaceTokenizer, check_hf_kwargs, needs_remote_code

    kwargs = dict(config.hf_tokenizer_kwargs)
    check_hf_kwargs(kwargs, legacy=config.legacy_tokenizer, path=where)
    if kwargs.get("trust_remote_code") is True and not trust_remote_code:
        logger.warning("the tokenizer settings of %s ask for trust_remote_code=True; not honoured unless the "
                       "caller passes trust_remote_code=True", where)
    source = hf_source(config, iter_dir, given)
    if isinstance(source, str):
        source = cached_snapshot(source)
    if not config.legacy_tokenizer:
        vocab_file = kwargs.pop("vocab_file", None) or config.vocab_file
        if vocab_file:
            checked = check_allowed(vocab_file, what=f"vocab_file {vocab_file}")
            if checked.is_file():
                kwargs["vocab_file"] = str(checked)
    if isinstance(special_tokens, dict):
        special_tokens = list(special_tokens.values())
    try:
        return HuggingFaceTokenizer(
            source,
            kwargs=kwargs,
            special_tokens=special_tokens,
            chat_template=config.chat_template,
            legacy=config.legacy_tokenizer,
            trust_remote_code=trust_remote_code,
        )
    except TokenizerError as e:
        custom = needs_remote_code(Path(source)) if isinstance(source, Path) and source.is_dir() else None
        if custom and not trust_remote_code:
            raise TokenizerError(
                f"{custom} maps AutoTokenizer to custom code (auto_map); megaload does not run code from a "
                f"checkpoint unless the caller passes trust_remote_code=True to load_tokenizer",
                path=custom,
            ) from e
        raise


def bundle_tokenizer_files(config: TokenizerConfig, dest: Path, *, iter_dir: Path | None = None,
                           trust_remote_code: bool = False) -> list[Path]:
    """Write the files the tokenizer of ``config`` reads into ``dest`` (a checkpoint's
    ``tokenizer/`` dir) under the names Bridge uses, so that :func:`load_tokenizer` finds them
    wherever the checkpoint goes. Files are found as :func:`load_tokenizer` finds them
    (``iter_dir`` is the checkpoint they come from, for its own bundled copy). A Hugging Face
    tokenizer is loaded and saved with ``save_pretrained`` (never a copy of its directory,
    which may hold model weights). Returns the files written; none for a NullTokenizer."""
    ttype = config.tokenizer_type
    if ttype == "NullTokenizer":
        return []
    if ttype == "HuggingFaceTokenizer":
        tokenizer = build_tokenizer(config, iter_dir=iter_dir, trust_remote_code=trust_remote_code)
        dest.mkdir(parents=True, exist_ok=True)
        return sorted(Path(p) for p in tokenizer.hf_tokenizer.save_pretrained(str(dest)))
    if ttype not in _BUNDLED_NAMES:
        build_tokenizer(config, iter_dir=iter_dir)  # raises the error naming the type
    written = []
    for field, name in _BUNDLED_NAMES[ttype]:
        source = locate_file(config, field, name, iter_dir, frozenset())
        dest.mkdir(parents=True, exist_ok=True)
        if source.resolve() != (dest / name).resolve():
            shutil.copyfile(source, dest / name)
        written.append(dest / name)
    return written


def tokenizer_files(checkpoint_path: str | os.PathLike) -> dict[str, Path]:
    """The files a checkpoint's tokenizer is read from, keyed by the name each has in a
    Hugging Face model directory, found as :func:`load_tokenizer` finds them (a recorded
    absolute path that exists, else the copy bundled in ``<iter_dir>/tokenizer/``); nothing
    is built or read. A Hugging Face tokenizer gives the files of
    :data:`HF_TOKENIZER_FILENAMES` its directory holds (never anything else there, which may be
    model weights); GPT-2 BPE ``vocab.json`` and ``merges.txt``; SentencePiece
    ``tokenizer.model``; a NullTokenizer none. Paths are as found (symlinks not followed): a
    caller serving them checks where they lead. Raises :class:`TokenizerError` when the
    checkpoint records no tokenizer or its files cannot be found locally."""
    from ._hf_dir import hf_model_dir

    hf_dir = hf_model_dir(checkpoint_path)
    if hf_dir is not None:  # a Hugging Face model directory: the tokenizer files it holds
        return {name: hf_dir / name for name in HF_TOKENIZER_FILENAMES if (hf_dir / name).is_file()}
    iter_dir = resolve_iteration_dir(checkpoint_path)
    config = _effective_config(iter_dir, {})
    ttype = config.tokenizer_type
    if ttype == "NullTokenizer":
        return {}
    if ttype == "HuggingFaceTokenizer":
        source = hf_source(config, iter_dir, frozenset())
        if isinstance(source, str):
            source = cached_snapshot(source)
        if source.is_file():  # a tokenizer.json named directly
            return {source.name: source} if source.name in HF_TOKENIZER_FILENAMES else {}
        return {name: source / name for name in HF_TOKENIZER_FILENAMES if (source / name).is_file()}
    if ttype not in _BUNDLED_NAMES:
        build_tokenizer(config, iter_dir=iter_dir)  # raises the error naming the type
    return {name: locate_file(config, field, name, iter_dir, frozenset()) for field, name in _BUNDLED_NAMES[ttype]}
