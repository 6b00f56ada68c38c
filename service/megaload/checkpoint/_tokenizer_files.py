"""Where a tokenizer's files come from, found as :func:`~megaload.checkpoint.load_tokenizer`
finds them (see its module for the order: the caller's path, the recorded path, the bundled
copy, the local Hugging Face cache), and checked before anything reads them: inside the
allowed roots when reading is confined (a recorded path outside them counts as absent, so the
bundled copy is used), and, for the files transformers reads whole, within their size limits.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ._errors import CorruptCheckpointError, OutsideRootsError, TokenizerError, summarize
from ._files import TOKENIZER_CONFIG_LIMIT, TOKENIZER_VOCAB_LIMIT, allowed_roots, check_allowed
from ._layout import TOKENIZER_DIRNAME
from ._tokenizer_config import TokenizerConfig

__all__ = ["locate_file", "hf_source", "cached_snapshot", "checked_directory"]

logger = logging.getLogger(__name__)

_HF_DIR_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
# Files of a Hugging Face tokenizer directory that transformers reads whole: configs, and data.
_HF_FILE_LIMITS = {name: TOKENIZER_CONFIG_LIMIT for name in (
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "config.json", "generation_config.json",
    "chat_template.jinja", "chat_template.json")}
_HF_DATA_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_HUB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def _recorded_here(
    value: str | None, field: str, *, exists=Path.is_file
) -> tuple[Path | None, OutsideRootsError | None]:
    """A path recorded in the checkpoint, if it is absolute and exists here (inside the roots
    when confined); else None, with the refusal when it lies outside the roots."""
    if not value or not Path(value).is_absolute():
        return None, None
    try:
        path = check_allowed(value, what=f"{field} {value} (recorded in the checkpoint)")
    except OutsideRootsError as e:
        return None, e
    if exists(path):
        return path, None
    return None, None


def locate_file(config: TokenizerConfig, field: str, bundled_name: str, iter_dir: Path | None,
                given: frozenset[str]) -> Path:
    value = getattr(config, field)
    if field in given and value:
        path = check_allowed(Path(value).expanduser(), what=f"{field}={value}")
        if path.is_file():
            return path
        raise TokenizerError(f"{field}={value} passed to load_tokenizer is not a file", path=value)
    recorded, outside = _recorded_here(value, field)
    if recorded is not None:
        return recorded
    bundled = iter_dir / TOKENIZER_DIRNAME / bundled_name if iter_dir is not None else None
    if bundled is not None and bundled.is_file():
        bundled = check_allowed(bundled)
        if value:
            logger.warning("%s %s recorded in the checkpoint is not usable here; using %s bundled with the checkpoint",
                           field, summarize(value), bundled)
        return bundled
    if outside is not None:
        raise outside
    raise _nowhere(config.tokenizer_type, field, value, bundled, "is not there either")


def _nowhere(
    tokenizer_type: str, field: str, value: str | None, bundled: Path | None, absent: str, *, hint: str = ""
) -> TokenizerError:
    """The checkpoint names no usable ``field`` and nothing is bundled at ``bundled``."""
    recorded = f"records {field}={value}, which does not exist here" if value else f"records no {field}"
    return TokenizerError(
        f"a {tokenizer_type} needs {field}: the checkpoint {recorded}, and "
        f"{bundled if bundled is not None else 'no iteration directory'} {absent}; "
        f"pass {field}=...{hint} to load_tokenizer",
        path=bundled if bundled is not None else value,
    )


def checked_directory(directory: Path) -> Path:
    """``directory`` resolved, with every entry in it inside the roots when confined
    (transformers reads whichever of them it knows) and every file transformers reads whole
    within its size limit (it reads them unbounded)."""
    real = check_allowed(directory)
    if not real.is_dir():
        return real
    confined = allowed_roots() is not None
    for entry in sorted(os.scandir(real), key=lambda e: e.name):
        named = Path(directory) / entry.name
        if confined:
            check_allowed(named)
        limit = _HF_FILE_LIMITS.get(entry.name)
        if limit is None and entry.name.endswith(_HF_DATA_SUFFIXES):
            limit = TOKENIZER_VOCAB_LIMIT
        if limit is not None and entry.is_file():
            size = entry.stat().st_size
            if size > limit:
                raise CorruptCheckpointError(f"{named} is {size} bytes; the limit for a tokenizer file of its kind "
                                             f"is {limit} bytes", path=named)
    return real


def hf_source(config: TokenizerConfig, iter_dir: Path | None, given: frozenset[str]) -> str | Path:
    value = config.tokenizer_model
    if "tokenizer_model" in given and value:
        path = Path(value).expanduser()
        if path.exists() or path.is_symlink():
            return checked_directory(path) if path.is_dir() else check_allowed(path, what=f"tokenizer_model={value}")
        return value
    recorded, outside = _recorded_here(value, "tokenizer_model", exists=Path.exists)
    if recorded is not None:
        return checked_directory(recorded) if recorded.is_dir() else recorded
    bundled = iter_dir / TOKENIZER_DIRNAME if iter_dir is not None else None
    if bundled is not None and any((bundled / name).is_file() for name in _HF_DIR_MARKERS):
        if value:
            logger.warning("tokenizer_model %s recorded in the checkpoint is not usable here; using %s bundled with "
                           "the checkpoint", summarize(value), bundled)
        return checked_directory(bundled)
    if outside is not None:
        raise outside
    if value and _HUB_NAME.match(value) and ".." not in value:
        return value  # a hub name: the local cache is tried, offline
    raise _nowhere("HuggingFaceTokenizer", "tokenizer_model", value, bundled, "holds no tokenizer files",
                   hint=" (a local directory)")


def cached_snapshot(repo_id: str) -> Path:
    """The local cache's copy of a hub repository, found without any network access (some
    transformers versions would otherwise ask the hub about a name even with local_files_only)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # huggingface_hub raises several types for "not cached" / "bad name"
        raise TokenizerError(
            f"tokenizer_model {summarize(repo_id)} is neither a local directory nor in the local Hugging Face cache; "
            f"megaload never downloads: pass tokenizer_model=... (a local directory) to load_tokenizer",
            path=repo_id,
        ) from e
    return checked_directory(snapshot)
