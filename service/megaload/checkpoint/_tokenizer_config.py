"""The tokenizer settings a checkpoint records, read without building anything.

Two places hold them:

- Megatron Bridge: the ``tokenizer:`` section of ``<iter_dir>/run_config.yaml``, a mapping with
  ``_target_: megatron.bridge.training.tokenizers.config.TokenizerConfig`` and that dataclass's
  fields. ``tokenizer: null`` means the run had no tokenizer. A ``pathlib.Path`` field is written
  by Bridge's YAML dumper as ``{_target_: pathlib.PosixPath, _call_: true}`` with the path itself
  lost; we read it as "no path recorded", which makes the loader use the bundled files.
- Megatron-LM: the ``args`` Namespace in ``<iter_dir>/common.pt``. Fields with the same name
  as a :class:`TokenizerConfig` field are taken as they are (what Bridge does); the Megatron-LM
  spellings of the Hugging Face and SentencePiece options (``tokenizer_hf_use_fast``,
  ``tokenizer_hf_include_special_tokens``, ``tokenizer_special_tokens``,
  ``tokenizer_sentencepiece_legacy``, ``tokenizer_metadata``, ``trust_remote_code``) are
  carried into the matching fields too, so the tokenizer behaves as it did in training (Bridge
  drops them).

Nothing named by ``_target_`` is ever imported or called. Overrides are checked against the
field list; an unknown name raises :class:`IncompatibleConfigError` (a ValueError) naming it,
where Bridge raises AttributeError.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import CorruptCheckpointError, IncompatibleConfigError, TokenizerError, summarize
from ._layout import COMMON_FILENAME, RUN_CONFIG_FILENAME

__all__ = [
    "TokenizerConfig",
    "BRIDGE_TOKENIZER_CONFIG_TARGET",
    "recorded_tokenizer_config",
    "apply_overrides",
]

logger = logging.getLogger(__name__)

BRIDGE_TOKENIZER_CONFIG_TARGET = "megatron.bridge.training.tokenizers.config.TokenizerConfig"


@dataclass
class TokenizerConfig:
    """Megatron Bridge's tokenizer settings (field names and defaults as in Bridge 0.3.1)."""

    legacy_tokenizer: bool = False
    metadata_path: str | dict | None = None
    vocab_size: int | None = None
    vocab_file: str | None = None
    merge_file: str | None = None
    vocab_extra_ids: int = 0
    tokenizer_type: str | None = None
    tokenizer_model: str | None = None
    special_tokens: list[str] | dict[str, str] | None = None
    chat_template: str | None = None
    tiktoken_pattern: str | None = None
    tiktoken_num_special_tokens: int = 1000
    tiktoken_special_tokens: list[str] | None = None
    tokenizer_prompt_format: str | None = None
    image_tag_type: str | None = None
    hf_tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    sp_tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_run_config_section(self) -> dict[str, Any]:
        """The ``tokenizer:`` mapping Bridge writes in ``run_config.yaml`` for these settings."""
        section: dict[str, Any] = {"_target_": BRIDGE_TOKENIZER_CONFIG_TARGET}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            section[f.name] = dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value
        return section


FIELD_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(TokenizerConfig))
PATH_FIELDS = ("tokenizer_model", "vocab_file", "merge_file")
_BOOL_FIELDS = frozenset({"legacy_tokenizer"})
_INT_FIELDS = frozenset({"vocab_size", "vocab_extra_ids", "tiktoken_num_special_tokens"})
_OPTIONAL_INT_FIELDS = frozenset({"vocab_size"})
_STR_FIELDS = frozenset(
    {"tokenizer_type", "chat_template", "tiktoken_pattern", "tokenizer_prompt_format", "image_tag_type"}
)
_DICT_FIELDS = frozenset({"hf_tokenizer_kwargs", "sp_tokenizer_kwargs"})
_LIST_FIELDS = frozenset({"special_tokens", "tiktoken_special_tokens"})

# Megatron-LM argument -> (TokenizerConfig field, key inside that field when it is a dict).
_MLM_ALIASES: tuple[tuple[str, str, str | None], ...] = (
    ("tokenizer_special_tokens", "special_tokens", None),
    ("tokenizer_metadata", "metadata_path", None),
    ("tokenizer_hf_use_fast", "hf_tokenizer_kwargs", "use_fast"),
    ("tokenizer_hf_include_special_tokens", "hf_tokenizer_kwargs", "include_special_tokens"),
    ("trust_remote_code", "hf_tokenizer_kwargs", "trust_remote_code"),
    ("tokenizer_sentencepiece_legacy", "sp_tokenizer_kwargs", "legacy"),
)


def _is_lost_path_marker(value: Any) -> bool:
    """Bridge's dump of a ``pathlib.Path``: the class is named, the path itself is gone."""
    if not isinstance(value, Mapping):
        return False
    target = value.get("_target_")
    return (
        isinstance(target, str)
        and target.startswith("pathlib.")
        and target.endswith("Path")
        and not value.get("_args_")
    )


def _coerce(name: str, value: Any, *, origin: str, path: str | os.PathLike | None) -> Any:
    """Check one field's value against its type; paths become ``str``. ``origin`` says where
    the value came from (for the error message)."""

    def bad(expected: str) -> IncompatibleConfigError:
        return IncompatibleConfigError(
            f"tokenizer field {name!r} from {origin} should be {expected}, got {type(value).__name__} {summarize(value)}",
            path=path,
            field=name,
        )

    if name in PATH_FIELDS:
        if value is None or _is_lost_path_marker(value):
            return None
        if isinstance(value, Mapping) and isinstance(value.get("_target_"), str):
            target = value["_target_"]
            args = value.get("_args_")
            if target.startswith("pathlib.") and isinstance(args, list) and len(args) == 1 and isinstance(args[0], str):
                return args[0]
            raise bad("a path (a serialized object is never instantiated)")
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            return text if text not in ("", ".") else None
        raise bad("a path")
    if name == "metadata_path":
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise bad("a path or a mapping")
    if value is None:
        if name in _DICT_FIELDS:
            return {}
        if name in _BOOL_FIELDS or (name in _INT_FIELDS and name not in _OPTIONAL_INT_FIELDS):
            raise bad("set")
        return None
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a non-negative integer")
        return value
    if name in _STR_FIELDS:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if name in _DICT_FIELDS:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping with string keys")
        return dict(value)
    if name in _LIST_FIELDS:
        if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
            return list(value)
        if name == "special_tokens" and isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return dict(value)
        raise bad("a list of strings")
    raise AssertionError(f"field {name} has no type rule")  # pragma: no cover - table is complete


def config_from_bridge_section(section: Mapping[str, Any], *, path: Path) -> TokenizerConfig:
    """Build a config from the ``tokenizer:`` mapping of a run config (keys starting with
    ``_`` are Hydra markers and skipped; unknown keys, e.g. from a newer Bridge, are logged
    and ignored)."""
    values: dict[str, Any] = {}
    for key, value in section.items():
        if not isinstance(key, str):
            raise CorruptCheckpointError(f"{path}: tokenizer section has a non-string key {summarize(key)}", path=path)
        if key.startswith("_"):
            continue
        if key not in FIELD_NAMES:
            logger.warning("%s: ignoring unknown tokenizer field %s", path, summarize(key))
            continue
        values[key] = _coerce(key, value, origin=str(path), path=path)
    return TokenizerConfig(**values)


def config_from_megatron_args(args: Any, *, path: Path) -> TokenizerConfig:
    """Build a config from a Megatron-LM ``args`` Namespace (or a dict of the same)."""
    items = args if isinstance(args, Mapping) else vars(args)
    values: dict[str, Any] = {}
    origin = f"{path} (args)"
    for name in FIELD_NAMES:
        if name in items:
            values[name] = _coerce(name, items[name], origin=origin, path=path)
    for arg, name, key in _MLM_ALIASES:
        value = items.get(arg)
        if value is None:
            continue
        if key is None:
            if values.get(name) is None:
                values[name] = _coerce(name, value, origin=origin, path=path)
        else:
            kwargs = values.setdefault(name, {})
            kwargs.setdefault(key, value)
    return TokenizerConfig(**values)


def recorded_tokenizer_config(iter_dir: Path) -> TokenizerConfig | None:
    """The tokenizer settings recorded in an iteration directory, or None when the checkpoint
    records no tokenizer (``tokenizer: null``, no ``tokenizer`` section, no ``args``)."""
    run_config_path = iter_dir / RUN_CONFIG_FILENAME
    if run_config_path.is_file():
        from ._run_config import read_run_config

        run_config = read_run_config(run_config_path)
        section = run_config.get("tokenizer")
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise CorruptCheckpointError(
                f"{run_config_path}: the tokenizer section should be a mapping, found {type(section).__name__}",
                path=run_config_path,
            )
        return config_from_bridge_section(section, path=run_config_path)
    if (iter_dir / COMMON_FILENAME).is_file():
        from ._pickle import load_common_state_dict

        state = load_common_state_dict(iter_dir)
        args = state.get("args")
        if args is None:
            return None
        if not isinstance(args, Mapping) and not hasattr(args, "__dict__"):
            raise CorruptCheckpointError(
                f"{iter_dir / COMMON_FILENAME}: 'args' should be a Namespace, found {type(args).__name__}",
                path=iter_dir / COMMON_FILENAME,
            )
        return config_from_megatron_args(args, path=iter_dir / COMMON_FILENAME)
    raise TokenizerError(
        f"checkpoint {iter_dir} has neither {RUN_CONFIG_FILENAME} nor {COMMON_FILENAME}: "
        f"no tokenizer settings to read",
        path=iter_dir,
    )


def apply_overrides(config: TokenizerConfig, overrides: Mapping[str, Any], *, path: Path) -> TokenizerConfig:
    """A copy of ``config`` with ``overrides`` applied (the caller's config is not changed)."""
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise IncompatibleConfigError(
            f"unknown tokenizer field {summarize(unknown[0])} in overrides; known fields: {', '.join(sorted(FIELD_NAMES))}",
            path=path,
            field=unknown[0],
        )
    updated = copy.deepcopy(config)
    for name, value in overrides.items():
        setattr(updated, name, _coerce(name, value, origin="overrides", path=path))
    return updated
