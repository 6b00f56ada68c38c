"""Compatibility tests: the upstream fixtures, their references, and bit-exact comparison.

Helpers are handed out as fixtures (``references``, ``flatten_state_dict``,
``assert_bitwise_equal``) so test modules need no import from a conftest. Loaded references
are cached for the session; tests only read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from upstream_fixtures import FIXTURES_DIR


class References:
    """What the real upstream loader produced for each fixture (see fixtures/README.md)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}

    def _get(self, name: str, kind: str, load):
        key = (name, kind)
        if key not in self._cache:
            self._cache[key] = load(FIXTURES_DIR / name)
        return self._cache[key]

    def save_dir(self, name: str) -> Path:
        return FIXTURES_DIR / name / "checkpoint"

    def iter_dir(self, name: str) -> Path:
        return FIXTURES_DIR / name / self.notes(name)["iter_dir"]

    def config(self, name: str) -> dict:
        return self._get(name, "config", lambda d: json.loads((d / "reference_config.json").read_text()))

    def notes(self, name: str) -> dict:
        return self._get(name, "notes", lambda d: json.loads((d / "reference_notes.json").read_text()))

    def mlm_args(self, name: str) -> dict | None:
        def load(d: Path):
            path = d / "reference_mlm_args.json"
            return json.loads(path.read_text()) if path.is_file() else None

        return self._get(name, "mlm_args", load)

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return self._get(name, "state_dict", lambda d: load_file(str(d / "reference_state_dict.safetensors")))


@pytest.fixture(scope="session")
def references() -> References:
    return References()


def _flatten(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten nested dicts with '.', as the references were made: tensors by key, and the type
    name of every other leaf (``_extra_state`` entries are dropped)."""
    tensors: dict[str, torch.Tensor] = {}
    others: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if "_extra_state" in str(key):
                continue
            t, o = _flatten(value, f"{prefix}{key}.")
            tensors.update(t)
            others.update(o)
        return tensors, others
    name = prefix[:-1]
    if isinstance(tree, torch.Tensor):
        tensors[name] = tree
    else:
        others[name] = type(tree).__name__
    return tensors, others


@pytest.fixture(scope="session")
def flatten_state_dict():
    return _flatten


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view(_INT_VIEW[t.element_size()])


def _assert_bitwise_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys; per key same dtype, shape and bits (so -0.0 and NaN payloads count)."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]}, unexpected {extra[:10]}"
    bad = []
    for key, want in expected.items():
        got = actual[key]
        if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            bad.append(f"{key}: {got.dtype}{tuple(got.shape)} != {want.dtype}{tuple(want.shape)}")
        elif not torch.equal(_bits(got), _bits(want)):
            bad.append(f"{key}: values differ")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="session")
def assert_bitwise_equal():
    return _assert_bitwise_equal


@pytest.fixture(autouse=True)
def no_leftover_group():
    """Library calls create and destroy their own group: none may outlive a test."""
    yield
    leaked = dist.is_initialized()
    if leaked:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    assert not leaked, "a process group was left behind"
