"""SentencePiece tokenizers (``SentencePieceTokenizer``, ``GPTSentencePieceTokenizer``,
``Llama2Tokenizer``), read from a ``tokenizer.model`` file.

Two behaviours, chosen by the checkpoint's ``legacy_tokenizer`` field:

- default (``legacy_tokenizer: false``, what Bridge builds through megatron-core's tokenizer
  library, the same for all three type names): ids are the model's own pieces; ``bos``,
  ``eos``, ``pad``, ``unk`` are the model's ids where it defines them and ``eod`` is ``eos``.
  ``sp_tokenizer_kwargs`` may set ``ignore_extra_whitespaces: false``: runs of spaces are then
  kept even when the model itself collapses them.
- legacy (``legacy_tokenizer: true``, Megatron's original classes):
  ``SentencePieceTokenizer`` appends ``<CLS> <SEP> <EOD> <MASK>`` (and ``<PAD> <BOS> <EOS>``
  where the model lacks them, then ``vocab_extra_ids`` sentinels ``<extra_id_N>``) after the
  model's pieces, finds those tokens in text before encoding the rest, and ``eod`` is ``<EOD>``;
  ``GPTSentencePieceTokenizer`` is the plain model with ``eod`` = ``eos``; ``Llama2Tokenizer``
  is the same but puts ``bos`` before every tokenized text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ._errors import CorruptCheckpointError, TokenizerError
from ._files import TOKENIZER_VOCAB_LIMIT, read_limited
from ._tokenizer_types import MegatronTokenizer

__all__ = ["SentencePieceTokenizer", "SENTENCEPIECE_TYPES"]

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")

# Marks a kept space while encoding with ignore_extra_whitespaces=false; chosen (as upstream
# does) because no real vocabulary is likely to hold it.
_SPACE_MARK = "\u262f"
_RUN_OF_SPACES = re.compile(r"(?<= )(?= )|^ | $")


class SentencePieceTokenizer(MegatronTokenizer):
    """A SentencePiece model behind the Megatron tokenizer interface (see module docstring)."""

    library = "sentencepiece"

    def __init__(
        self,
        model_file: Path,
        *,
        tokenizer_type: str = "SentencePieceTokenizer",
        legacy: bool = False,
        vocab_extra_ids: int = 0,
        ignore_extra_whitespaces: bool = True,
        strip_decoded: bool = False,
    ) -> None:
        super().__init__(tokenizer_type=tokenizer_type, source=model_file, legacy=legacy)
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            proto = read_limited(model_file, TOKENIZER_VOCAB_LIMIT, kind="a SentencePiece model")
        except CorruptCheckpointError as e:
            raise TokenizerError(f"cannot load SentencePiece model: {e}", path=model_file) from e
        try:
            self._sp.LoadFromSerializedProto(proto)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"cannot load SentencePiece model {model_file}: {e}", path=model_file) from e
        self._pieces = self._sp.get_piece_size()
        self._vocab_size = self._pieces
        # Tokens found in text before SentencePiece sees it (legacy SentencePieceTokenizer only),
        # in the order they were defined: that order breaks ties between tokens that start at
        # the same place.
        self._split_tokens: dict[str, int] = {}
        self._split_ids: dict[int, str] = {}
        self._bos_prefix = False
        self._keep_spaces = False
        self._strip_decoded = strip_decoded

        for name, token_id in (
            ("bos", self._sp.bos_id()),
            ("eos", self._sp.eos_id()),
            ("pad", self._sp.pad_id()),
            ("unk", self._sp.unk_id()),
        ):
            self._set_special(name, token_id)
        if legacy and tokenizer_type == "SentencePieceTokenizer":
            self._add_legacy_tokens(vocab_extra_ids)
        else:
            if "eos" in self._special:
                self._special["eod"] = self._special["eos"]
            self._bos_prefix = legacy and tokenizer_type == "Llama2Tokenizer" and "bos" in self._special
        if not legacy and not ignore_extra_whitespaces:
            collapses = self._sp.encode_as_pieces("x  y") == self._sp.encode_as_pieces("x y")
            self._keep_spaces = collapses

    def _add_legacy_tokens(self, vocab_extra_ids: int) -> None:
        vocab = {self._sp.id_to_piece(i): i for i in range(self._pieces)}

        def add(token: str) -> int:
            if token not in vocab:
                vocab[token] = len(vocab)
            self._split_tokens[token] = vocab[token]
            self._split_ids[vocab[token]] = token
            return vocab[token]

        def model_piece(token_id: int, fallback: str) -> str:
            return self._sp.id_to_piece(token_id) if 0 <= token_id < self._pieces else fallback

        self._special["cls"] = add("<CLS>")
        self._special["sep"] = add("<SEP>")
        self._special["eod"] = add("<EOD>")
        self._special["mask"] = add("<MASK>")
        self._special["pad"] = add(model_piece(self._sp.pad_id(), "<PAD>"))
        self._special["bos"] = add(model_piece(self._sp.bos_id(), "<BOS>"))
        self._special["eos"] = add(model_piece(self._sp.eos_id(), "<EOS>"))
        for i in range(vocab_extra_ids):
            add(f"<extra_id_{i}>")
        self._vocab_size = len(vocab)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        text = self._check_text(text)
        if self._split_tokens:
            return self._tokenize_with_split_tokens(text)
        if self._keep_spaces:
            return self._tokenize_keeping_spaces(text)
        ids = list(self._sp.encode_as_ids(text))
        if self._bos_prefix:
            ids.insert(0, self._special["bos"])
        return ids

    def _tokenize_with_split_tokens(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        while True:
            found_at, found = -1, ""
            for token in self._split_tokens:
                at = text.find(token, start)
                if at >= 0 and (found_at < 0 or at < found_at):
                    found_at, found = at, token
            if found_at < 0:
                break
            ids.extend(self._sp.encode_as_ids(text[start:found_at]))
            ids.append(self._split_tokens[found])
            start = found_at + len(found)
        ids.extend(self._sp.encode_as_ids(text[start:]))
        return ids

    def _tokenize_keeping_spaces(self, text: str) -> list[int]:
        # Each extra space becomes " <mark> "; every piece of text between marks is encoded
        # with a mark after it, whose id is then dropped, so the model cannot merge the spaces.
        marked = _RUN_OF_SPACES.sub(f" {_SPACE_MARK} ", text).rstrip()
        ids: list[int] = []
        for part in marked.split(_SPACE_MARK):
            if part:
                ids.extend(self._sp.encode_as_ids(part + _SPACE_MARK)[:-1])
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = self._check_ids(ids)
        if not self._split_ids:
            text = self._sp.decode_ids(ids)
            return text.strip() if self._strip_decoded else text
        text, last = "", 0
        for i, token_id in enumerate(ids):
            token = self._split_ids.get(token_id)
            if token is not None:
                text += self._sp.decode_ids(ids[last:i]) + " " + token + " "
                last = i + 1
        return text + self._sp.decode_ids(ids[last:])
