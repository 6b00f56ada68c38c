"""The tokenizer interface Megatron code expects, and the tokenizers that need no Hugging Face.

Every tokenizer returned by :func:`megaload.checkpoint.load_tokenizer` is a
:class:`MegatronTokenizer`::

    MegatronTokenizer                 tokenize(text) -> ids, detokenize(ids) -> text, vocab_size, eod
    ├── NullTokenizer                 ids written as text: "12 34 56" <-> [12, 34, 56]
    ├── GPT2BPETokenizer              GPT-2 byte-level BPE from vocab.json + merges.txt
    ├── SentencePieceTokenizer        (_tokenizer_sp.py) a SentencePiece model file
    └── HuggingFaceTokenizer          (_tokenizer_hf.py) a Hugging Face tokenizer directory

Special ids (``bos``, ``eos``, ``pad``, ``unk``, ``mask``, ``cls``, ``sep`` and ``eod``) are
plain ints where the tokenizer has that token; where it has none, reading the attribute raises
AttributeError, as upstream's NullTokenizer does for ``pad``/``bos``/``eos`` (upstream's other
tokenizers return None or -1 there instead). :attr:`MegatronTokenizer.special_ids` lists the
ones that exist. Each ``x`` also answers as ``x_id`` (NeMo spelling).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._errors import CorruptCheckpointError, TokenizerError, summarize
from ._files import TOKENIZER_VOCAB_LIMIT, read_json, read_limited

__all__ = ["MegatronTokenizer", "NullTokenizer", "GPT2BPETokenizer", "SPECIAL_TOKEN_NAMES"]

SPECIAL_TOKEN_NAMES = ("bos", "eos", "pad", "unk", "mask", "cls", "sep")


def _special_id_property(name: str) -> property:
    def get(self: MegatronTokenizer) -> int:
        try:
            return self._special[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} ({self.tokenizer_type}) has no {name} token", name=name, obj=self
            ) from None

    get.__name__ = name
    get.__doc__ = f"Id of the {name} token; AttributeError when the tokenizer has none."
    return property(get)


class MegatronTokenizer:
    """Base class: the Megatron tokenizer interface.

    Subclasses implement :meth:`tokenize`, :meth:`detokenize` and :attr:`vocab_size`, and fill
    ``self._special`` (name -> id) with the special tokens that exist, ``eod`` included.
    ``tokenizer_type`` is the Megatron type name from the checkpoint (e.g. ``GPT2BPETokenizer``),
    ``library`` the backend, ``source`` the file or directory read (None for NullTokenizer).
    """

    library: str = ""

    def __init__(self, *, tokenizer_type: str, source: Path | None, legacy: bool = False) -> None:
        self.tokenizer_type = tokenizer_type
        self.source = source
        self.legacy = legacy
        self._special: dict[str, int] = {}

    # -- the interface ---------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        raise NotImplementedError

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (before the model pads it)."""
        raise NotImplementedError

    eod = _special_id_property("eod")
    bos = _special_id_property("bos")
    eos = _special_id_property("eos")
    pad = _special_id_property("pad")
    unk = _special_id_property("unk")
    mask = _special_id_property("mask")
    cls = _special_id_property("cls")
    sep = _special_id_property("sep")
    eod_id = _special_id_property("eod")
    bos_id = _special_id_property("bos")
    eos_id = _special_id_property("eos")
    pad_id = _special_id_property("pad")
    unk_id = _special_id_property("unk")
    mask_id = _special_id_property("mask")
    cls_id = _special_id_property("cls")
    sep_id = _special_id_property("sep")

    @property
    def special_ids(self) -> dict[str, int]:
        """The special tokens this tokenizer has, by name (``eod`` first)."""
        order = ("eod", *SPECIAL_TOKEN_NAMES)
        return {name: self._special[name] for name in order if name in self._special}

    def __call__(self, text: str) -> list[int]:
        return self.tokenize(text)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} type={self.tokenizer_type} vocab_size={self.vocab_size} "
            f"source={str(self.source) if self.source else None}>"
        )

    # -- helpers for subclasses ------------------------------------------------------------
    def _set_special(self, name: str, token_id: Any) -> None:
        """Record a special id when it exists (not None, not negative)."""
        if token_id is None or isinstance(token_id, bool):
            return
        token_id = int(token_id)
        if token_id >= 0:
            self._special[name] = token_id

    @staticmethod
    def _check_text(text: Any) -> str:
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
        return text

    def _check_ids(self, ids: Iterable[Any]) -> list[int]:
        """``ids`` as a list of ints, each in ``[0, vocab_size)``; ValueError naming the first
        id that is not."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"detokenize expects a sequence of ints, got {type(ids).__name__}")
        out = []
        size = self.vocab_size
        for position, value in enumerate(ids):
            try:
                token_id = operator.index(value)
            except TypeError:
                raise TypeError(
                    f"detokenize expects ints; item {position} is {type(value).__name__} {value!r:.40}"
                ) from None
            if not 0 <= token_id < size:
                raise ValueError(
                    f"token id {token_id} (item {position}) is outside the vocabulary [0, {size}) "
                    f"of this {self.tokenizer_type}"
                )
            out.append(token_id)
        return out


class NullTokenizer(MegatronTokenizer):
    """Token ids written as decimal integers separated by single spaces.

    As Megatron Bridge builds it from a recorded ``vocab_size`` V: ``vocab_size`` is V and
    ``eod`` is V - 1 (Megatron-LM's own builder made it V + 1 and V). There is no other
    special token.
    """

    library = "null"

    def __init__(self, vocab_size: int, *, tokenizer_type: str = "NullTokenizer", legacy: bool = False) -> None:
        super().__init__(tokenizer_type=tokenizer_type, source=None, legacy=legacy)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"NullTokenizer needs a positive integer vocab_size, got {summarize(vocab_size)}")
        self._vocab_size = vocab_size
        self._special["eod"] = vocab_size - 1

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        """``"12 34"`` -> ``[12, 34]``; ValueError for anything but integers separated by
        single spaces (upstream accepts any integer, in range or not; so do we)."""
        ids = []
        for piece in self._check_text(text).split(" "):
            try:
                ids.append(int(piece))
            except ValueError:
                raise ValueError(
                    f"NullTokenizer reads token ids written as integers separated by single spaces; "
                    f"{piece!r:.40} is not an integer"
                ) from None
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"detokenize expects a sequence of ints, got {type(ids).__name__}")
        return " ".join(str(operator.index(i)) for i in ids)


_ENDOFTEXT = "<|endoftext|>"


class GPT2BPETokenizer(MegatronTokenizer):
    """GPT-2's byte-level BPE, read from ``vocab.json`` and ``merges.txt``.

    Behaves as Megatron's original GPT-2 tokenizer (the one Megatron-LM and Bridge's legacy
    path build): GPT-2's pre-tokenization pattern, merges by rank, no added special tokens
    (``<|endoftext|>`` inside text is encoded as plain text), a piece missing from the vocab
    becomes id 0, and decoding replaces invalid UTF-8. ``eod`` = ``eos`` = the id of
    ``<|endoftext|>``. (Upstream's non-legacy path asks the Hugging Face hub for ``gpt2``
    files, which an offline service cannot do.) The BPE itself runs in the ``tokenizers``
    library.
    """

    library = "gpt2-bpe"

    def __init__(self, vocab_file: Path, merge_file: Path, *, tokenizer_type: str = "GPT2BPETokenizer",
                 legacy: bool = False) -> None:
        super().__init__(tokenizer_type=tokenizer_type, source=vocab_file.parent, legacy=legacy)
        self.vocab_file = vocab_file
        self.merge_file = merge_file
        encoder = self._read_vocab(vocab_file)
        merges = self._read_merges(merge_file)
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        id_zero = next((token for token, i in encoder.items() if i == 0), None)
        try:
            model = models.BPE(vocab=encoder, merges=merges, unk_token=id_zero)
        except Exception as e:  # the tokenizers library raises its own Exception type
            raise TokenizerError(
                f"{merge_file} does not fit {vocab_file.name}: {e}", path=merge_file
            ) from e
        self._bpe = Tokenizer(model)
        self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._bpe.decoder = decoders.ByteLevel()
        self._vocab_size = len(encoder)
        if _ENDOFTEXT not in encoder:
            raise TokenizerError(f"{vocab_file} has no {_ENDOFTEXT} token, which GPT-2 BPE uses as eod",
                                 path=vocab_file)
        self._special["eod"] = self._special["eos"] = encoder[_ENDOFTEXT]

    @staticmethod
    def _read_vocab(path: Path) -> dict[str, int]:
        try:
            encoder = read_json(path, TOKENIZER_VOCAB_LIMIT, kind="a tokenizer vocabulary")
        except CorruptCheckpointError as e:
            raise TokenizerError(f"cannot read GPT-2 vocab: {e}", path=path) from e
        if not isinstance(encoder, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in encoder.items()
        ):
            raise TokenizerError(f"{path} should map tokens to non-negative integer ids", path=path)
        return encoder

    @staticmethod
    def _read_merges(path: Path) -> list[tuple[str, str]]:
        try:
            text = read_limited(path, TOKENIZER_VOCAB_LIMIT, kind="a tokenizer merges file").decode("utf-8")
        except UnicodeDecodeError as e:
            raise TokenizerError(f"cannot read GPT-2 merges {path}: {e}", path=path) from e
        except CorruptCheckpointError as e:
            raise TokenizerError(f"cannot read GPT-2 merges: {e}", path=path) from e
        # As Megatron reads it: the first line is the "#version" header, the piece after the
        # final newline is empty; a line that is not exactly two symbols can never match.
        merges = []
        for line in text.split("\n")[1:-1]:
            pair = line.split()
            if len(pair) == 2:
                merges.append((pair[0], pair[1]))
        return merges

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, text: str) -> list[int]:
        return list(self._bpe.encode(self._check_text(text), add_special_tokens=False).ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._bpe.decode(self._check_ids(ids), skip_special_tokens=False)
