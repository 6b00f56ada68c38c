"""Hugging Face tokenizers (``HuggingFaceTokenizer``), read from a local directory only.

``transformers`` is imported when a tokenizer is built, never at module import. Every load
passes ``local_files_only=True``: a directory is read as it is, a hub name is looked up in
the local cache only, nothing is downloaded. ``trust_remote_code`` is whatever the *caller*
allows (default False); a checkpoint cannot turn it on by itself.

Two behaviours, chosen by the checkpoint's ``legacy_tokenizer`` field:

- default (what Bridge builds through megatron-core's tokenizer library): loaded with
  ``use_fast`` False unless ``hf_tokenizer_kwargs`` says otherwise; ``tokenize`` converts the
  text's tokens to ids without adding BOS/EOS (unless ``include_special_tokens``);
  ``detokenize`` drops special tokens; a missing ``sep`` takes ``eos`` and a missing ``cls``
  takes ``bos`` (and the other way round), as upstream sets them; ``special_tokens`` become
  additional special tokens.
- legacy (Megatron's original wrapper): loaded with the library's default ``use_fast``;
  ``tokenize`` is ``tokenizer(text).input_ids`` (BOS/EOS added as the tokenizer's template
  says) and ``detokenize`` is ``tokenizer.decode(ids)`` (special tokens kept).

``eod`` is the ``eos`` token's id in both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import CheckpointError, IncompatibleConfigError, TokenizerError
from ._files import TOKENIZER_CONFIG_LIMIT, read_json
from ._tokenizer_types import MegatronTokenizer

__all__ = ["HuggingFaceTokenizer", "HF_KWARGS"]

logger = logging.getLogger(__name__)

_TOKEN_KWARGS = ("mask_token", "bos_token", "eos_token", "pad_token", "sep_token", "cls_token", "unk_token")
# hf_tokenizer_kwargs keys we honour; anything else is refused by name (a checkpoint must not
# be able to pass e.g. ``revision`` or ``local_files_only`` to from_pretrained).
HF_KWARGS = frozenset(
    {
        "use_fast",
        "trust_remote_code",
        "include_special_tokens",
        "chat_template",
        "additional_special_tokens",
        "vocab_file",
        "merges_file",
        *_TOKEN_KWARGS,
    }
)
# Tokenizer constructor options a legacy (pass-through) load may also carry.
_LEGACY_INIT_KWARGS = frozenset(
    {"add_bos_token", "add_eos_token", "legacy", "from_slow", "add_prefix_space", "do_lower_case",
     "padding_side", "model_max_length", "clean_up_tokenization_spaces"}
)


def check_hf_kwargs(kwargs: Mapping[str, Any], *, legacy: bool, path: Path) -> None:
    allowed = HF_KWARGS | (_LEGACY_INIT_KWARGS if legacy else frozenset())
    for key in kwargs:
        if key not in allowed:
            raise IncompatibleConfigError(
                f"hf_tokenizer_kwargs.{key} is not an option megaload passes to a Hugging Face tokenizer "
                f"(known: {', '.join(sorted(allowed))})",
                path=path,
                field=f"hf_tokenizer_kwargs.{key}",
            )


def needs_remote_code(directory: Path) -> str | None:
    """The file whose ``auto_map`` asks for custom tokenizer code, or None."""
    for name in ("tokenizer_config.json", "config.json"):
        candidate = directory / name
        if not candidate.is_file():
            continue
        try:
            data = read_json(candidate, TOKENIZER_CONFIG_LIMIT, kind="a tokenizer config")
        except CheckpointError:
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, list) or (isinstance(auto_map, dict) and "AutoTokenizer" in auto_map):
            return str(candidate)
    return None


class HuggingFaceTokenizer(MegatronTokenizer):
    """A ``transformers`` tokenizer behind the Megatron tokenizer interface."""

    library = "huggingface"

    def __init__(
        self,
        source: str | Path,
        *,
        kwargs: Mapping[str, Any],
        special_tokens: Sequence[str] | None = None,
        chat_template: str | None = None,
        legacy: bool = False,
        trust_remote_code: bool = False,
        tokenizer_type: str = "HuggingFaceTokenizer",
    ) -> None:
        super().__init__(tokenizer_type=tokenizer_type, source=Path(source) if Path(source).exists() else None,
                         legacy=legacy)
        self.name_or_path = str(source)
        kwargs = dict(kwargs)
        kwargs.pop("trust_remote_code", None)
        chat_template = kwargs.pop("chat_template", None) or chat_template
        self._include_special = bool(kwargs.pop("include_special_tokens", False))
        token_overrides = {k: kwargs.pop(k) for k in _TOKEN_KWARGS if kwargs.get(k) is not None}
        extra = list(kwargs.pop("additional_special_tokens", None) or special_tokens or [])
        self._hf = self._load(source, kwargs, legacy=legacy, trust_remote_code=trust_remote_code,
                              token_overrides=token_overrides)
        if chat_template is not None:
            self._hf.chat_template = chat_template
        if not legacy:
            self._add_special_tokens(token_overrides, extra)
        self._read_special_ids()

    def _load(self, source: str | Path, kwargs: dict[str, Any], *, legacy: bool, trust_remote_code: bool,
              token_overrides: dict[str, str]) -> Any:
        from transformers import AutoTokenizer

        options: dict[str, Any] = {}
        if legacy:
            options.update(kwargs)
            options.update(token_overrides)
        else:
            options["use_fast"] = bool(kwargs.get("use_fast", False))
            if kwargs.get("vocab_file"):
                options["vocab_file"] = str(kwargs["vocab_file"])
        options.pop("merges_file", None)
        options["trust_remote_code"] = trust_remote_code
        options["local_files_only"] = True
        try:
            return AutoTokenizer.from_pretrained(str(source), **options)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for bad files
            if not trust_remote_code and "trust_remote_code" in str(e):
                raise TokenizerError(
                    f"the Hugging Face tokenizer at {source} needs custom code from its files; megaload "
                    f"runs such code only when the caller passes trust_remote_code=True",
                    path=str(source),
                ) from e
            raise TokenizerError(
                f"cannot load a Hugging Face tokenizer from {source} (offline, local files only): "
                f"{type(e).__name__}: {e}",
                path=str(source),
            ) from e

    def _add_special_tokens(self, token_overrides: dict[str, str], extra: list[str]) -> None:
        hf = self._hf
        wanted: dict[str, Any] = dict(token_overrides)
        # Fill sep/eos and cls/bos from each other where one is missing, as upstream does.
        if "eos_token" not in wanted:
            if hf.sep_token is None and hf.eos_token and "sep_token" not in wanted:
                wanted["sep_token"] = hf.eos_token
            elif hf.eos_token is None and hf.sep_token:
                wanted["eos_token"] = hf.sep_token
        if "bos_token" not in wanted and hf.bos_token is None and hf.cls_token:
            wanted["bos_token"] = hf.cls_token
        if "cls_token" not in wanted and hf.cls_token is None and hf.bos_token:
            wanted["cls_token"] = hf.bos_token
        wanted["additional_special_tokens"] = extra
        added = hf.add_special_tokens(wanted)
        if added:
            logger.warning("%d special tokens were not in the vocabulary of %s and were added",
                           added, self.name_or_path)

    def _read_special_ids(self) -> None:
        hf = self._hf
        for name in ("bos", "eos", "pad", "unk", "mask", "cls", "sep"):
            token = getattr(hf, f"{name}_token", None)
            if token is not None:
                self._set_special(name, hf.convert_tokens_to_ids(str(token)))
        if "eos" in self._special:
            self._special["eod"] = self._special["eos"]

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying ``transformers`` tokenizer."""
        return self._hf

    def tokenize(self, text: str) -> list[int]:
        text = self._check_text(text)
        if self.legacy or self._include_special:
            return list(self._hf(text).input_ids)
        return list(self._hf.convert_tokens_to_ids(self._hf.tokenize(text)))

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = self._check_ids(ids)
        if self.legacy:
            return self._hf.decode(ids)
        special = set(self._hf.all_special_tokens)
        tokens = [t for t in self._hf.convert_ids_to_tokens(ids) if t not in special]
        return self._hf.convert_tokens_to_string(tokens)
