"""docs/reference/ is what docs/generate_reference.py writes from the code today."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "docs" / "generate_reference.py"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("generate_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages(generator) -> dict[str, str]:
    return generator.render_all()


@pytest.mark.parametrize("name", ["settings.md", "routes.md", "openapi.json", "client.md"])
def test_committed_page_is_up_to_date(pages, name):
    committed = REPO / "docs" / "reference" / name
    assert committed.is_file(), f"docs/reference/{name} is missing: run python docs/generate_reference.py"
    assert committed.read_text() == pages[name], (
        f"docs/reference/{name} is out of date: run python docs/generate_reference.py and commit the result"
    )


def test_pages_cover_every_setting_route_and_client_method(pages):
    from pydantic import SecretStr

    import megaload_client
    from megaload.app import create_app
    from megaload.settings import Settings

    for field in Settings.model_fields:
        assert f"| `{field}` |" in pages["settings.md"]
    # documented as a service with a token serves it (bearer auth and scopes declared)
    schema = create_app(Settings.model_construct(token=SecretStr("x" * 16))).openapi()
    assert json.loads(pages["openapi.json"]) == schema
    assert "securitySchemes" in schema["components"]
    for path, item in schema["paths"].items():
        for method in item:
            assert f"## {method.upper()} {path}\n" in pages["routes.md"]
    for name in ("load", "state_dict", "download", "save", "wait"):
        assert f"- `{name}(" in pages["client.md"]
    assert "### `megaload-client download`" in pages["client.md"]
    assert megaload_client.__version__


def test_check_mode_reports_a_stale_page(generator, tmp_path, monkeypatch, capsys):
    for name, text in generator.render_all().items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(generator, "REFERENCE", tmp_path)
    assert generator.main(["--check"]) == 0
    (tmp_path / "routes.md").write_text("stale\n")
    assert generator.main(["--check"]) == 1
    assert "docs/reference/routes.md" in capsys.readouterr().out
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0
