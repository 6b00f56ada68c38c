"""What `pip install .` installs: the wheel built from the project holds the status page's HTML
(package data, not only the Python modules) and requires the package that ships the API
reference's assets."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_status_page_and_the_docs_assets_dependency(tmp_path):
    src = tmp_path / "src"
    # the files the Dockerfile's wheel stage copies, so the build leaves nothing in the checkout
    shutil.copytree(REPO / "service", src / "service", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = (tmp_path / "w").glob("megaload-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        page = zf.read("megaload/api/static/status.html").decode("utf-8")
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode("utf-8")
    assert page == (REPO / "service/megaload/api/static/status.html").read_text(encoding="utf-8")
    assert "megaload/api/routes/pages.py" in names
    assert any(line.startswith("Requires-Dist: fastapi-offline") for line in metadata.splitlines()), metadata


def _client_wheel(tmp_path: Path) -> Path:
    """The wheel `pip wheel client/` builds, from a copy of client/ (the build leaves nothing in the checkout)."""
    src = tmp_path / "client"
    shutil.copytree(REPO / "client", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = (tmp_path / "w").glob("megaload_client-*.whl")
    return wheel


def test_the_client_wheel_requires_xxhash_so_verification_is_on_by_default(tmp_path):
    """`pip install megaload-client` alone verifies checksums: xxhash is a plain requirement,
    not behind an extra (it was optional, and a client-only install checked sizes only)."""
    with zipfile.ZipFile(_client_wheel(tmp_path)) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode("utf-8")
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert [r for r in requires if r.startswith("xxhash") and "extra ==" not in r], requires


def test_the_client_wheel_holds_every_module_and_the_command(tmp_path):
    """Every module under client/megaload_client is in the wheel, subpackages (the command line's
    _cli/) included, and the megaload-client script is the one `python -m megaload_client` runs."""
    with zipfile.ZipFile(_client_wheel(tmp_path)) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode("utf-8")
    modules = {p.relative_to(REPO / "client").as_posix() for p in (REPO / "client/megaload_client").rglob("*.py")}
    assert "megaload_client/_cli/__init__.py" in modules
    assert modules - names == set()
    assert "megaload-client = megaload_client.__main__:main" in entry_points.splitlines(), entry_points
