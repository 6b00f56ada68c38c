"""The upstream fixtures under ``tests/fixtures``: every directory with a reference state dict
(see ``tests/fixtures/README.md``), so a fixture added there is covered by every compat test and
by the service tests that run over all fixtures. Importable from every test folder (``tests/`` is
on ``sys.path`` through its conftest)."""

from __future__ import annotations

from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
FIXTURE_NAMES = tuple(sorted(p.parent.name for p in FIXTURES_DIR.glob("*/reference_state_dict.safetensors")))
