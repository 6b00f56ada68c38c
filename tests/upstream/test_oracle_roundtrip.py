"""What this project saves loads in the REAL upstream Megatron Bridge, bit for bit.

For every fixture (``tests/upstream_fixtures.py``): load it with our library, save it with our
library, then ask upstream Megatron Bridge's own ``load_megatron_model`` (``../shared/oracle``,
its own virtual environment) to load our save and compare every tensor, dtype and shape with
the fixture's upstream reference, and the key config fields with ``reference_config.json``.

The oracle's venv is made by ``make test-upstream`` (``.venv-oracle``) or named by
``MEGALOAD_ORACLE_PYTHON``. Without one these tests skip, unless ``MEGALOAD_REQUIRE_ORACLE=1``
(set by ``make test-upstream``), where a missing oracle fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

from megaload.checkpoint import load_megatron_model, save_megatron_model

REPO = Path(__file__).resolve().parents[2]
ORACLE_DIR = REPO.parent / "shared" / "oracle"
ORACLE_PYTHON = Path(os.environ.get("MEGALOAD_ORACLE_PYTHON", REPO / ".venv-oracle" / "bin" / "python"))


@pytest.fixture(scope="module")
def oracle() -> list[str]:
    script = ORACLE_DIR / "oracle_check.py"
    if not (ORACLE_PYTHON.is_file() and script.is_file()):
        reason = f"no upstream oracle ({ORACLE_PYTHON}, {script}); `make test-upstream` sets one up"
        if os.environ.get("MEGALOAD_REQUIRE_ORACLE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return [str(ORACLE_PYTHON), str(script)]


def _oracle_load(oracle: list[str], ckpt: Path, name: str) -> str:
    fixture = FIXTURES_DIR / name
    command = [*oracle, "load", "--ckpt", str(ckpt), "--ref", str(fixture / "reference_state_dict.safetensors"),
               "--ref-config", str(fixture / "reference_config.json")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert done.returncode == 0 and summary.startswith("ORACLE PASS"), (
        f"upstream refused {ckpt}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return summary


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_upstream_loads_the_fixture_itself(oracle, name):
    """The oracle agrees with its own references (so a failure below is about our save)."""
    _oracle_load(oracle, FIXTURES_DIR / name / "checkpoint", name)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_upstream_loads_what_we_save_bit_for_bit(oracle, tmp_path, name):
    model = load_megatron_model(FIXTURES_DIR / name / "checkpoint", use_cpu_init=True)
    save_megatron_model(model, tmp_path / "saved")
    summary = _oracle_load(oracle, tmp_path / "saved", name)
    assert "0 missing, 0 unexpected, 0 problems" in summary


HF_FIXTURE_NAMES = tuple(name for name in FIXTURE_NAMES if (FIXTURES_DIR / name / "hf" / "config.json").is_file())


@pytest.mark.parametrize("name", HF_FIXTURE_NAMES)
def test_upstream_loads_our_hf_import_as_its_own(oracle, tmp_path, name):
    """``import_hf`` of the original HF model loads in upstream Megatron Bridge to exactly the
    tensors upstream's own ``AutoBridge`` import gives (the fixture's reference), and its
    run_config names the provider class upstream's import names."""
    from megaload.checkpoint import import_hf

    out = import_hf(FIXTURES_DIR / name / "hf", tmp_path / "imported")
    summary = _oracle_load(oracle, out, name)
    assert "0 missing, 0 unexpected, 0 problems" in summary
    ours = (out / "iter_0000000" / "run_config.yaml").read_text().split("\nmodel:\n  _target_: ", 1)[1].split("\n")[0]
    theirs = (FIXTURES_DIR / name / "checkpoint" / "iter_0000000" / "run_config.yaml").read_text()
    assert f"\nmodel:\n  _target_: {ours}\n" in theirs
