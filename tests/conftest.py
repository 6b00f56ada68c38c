"""Shared test helpers: where the fixtures are, and a way to get a writable copy of one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES_DIR = Path(__file__).parent / "fixtures"
"""Real upstream checkpoints and the upstream loader's references (see fixtures/README.md)."""


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


@pytest.fixture
def copy_fixture(tmp_path):
    """``copy_fixture(name)`` copies ``tests/fixtures/<name>/checkpoint`` into ``tmp_path`` and
    returns the copy's save directory. Fixtures are never modified in place."""

    def _copy(name: str, dest_name: str | None = None) -> Path:
        dest = tmp_path / (dest_name or name)
        shutil.copytree(FIXTURES_DIR / name / "checkpoint", dest)
        return dest

    return _copy
