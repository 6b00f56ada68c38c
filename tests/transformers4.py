"""transformers 4.x, run in another Python, on an exported directory: the second transformers
major version the HF view must load in (the project's venv has 5.x).

The interpreter: ``MEGALOAD_TEST_TRANSFORMERS4_PYTHON``, else the upstream oracle's
(``MEGALOAD_ORACLE_PYTHON``, else ``.venv-oracle`` that ``make test-upstream`` makes; it has
transformers 4.57). Tests marked :data:`needs_transformers4` skip when there is none, and fail
instead under ``MEGALOAD_REQUIRE_ORACLE=1``. Importable from every test folder (``tests/`` is
on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

__all__ = ["TRANSFORMERS4_PYTHON", "needs_transformers4", "transformers4_logits"]

_REPO = Path(__file__).resolve().parents[1]


def _interpreter() -> str | None:
    for candidate in (os.environ.get("MEGALOAD_TEST_TRANSFORMERS4_PYTHON"), os.environ.get("MEGALOAD_ORACLE_PYTHON"),
                      str(_REPO / ".venv-oracle" / "bin" / "python")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


TRANSFORMERS4_PYTHON = _interpreter()
_MISSING = "no Python with transformers 4.x (MEGALOAD_TEST_TRANSFORMERS4_PYTHON, MEGALOAD_ORACLE_PYTHON, .venv-oracle)"

# Under MEGALOAD_REQUIRE_ORACLE=1 the tests run, and transformers4_logits fails for want of one.
needs_transformers4 = pytest.mark.skipif(
    TRANSFORMERS4_PYTHON is None and os.environ.get("MEGALOAD_REQUIRE_ORACLE") != "1", reason=_MISSING
)

_SCRIPT = """
import sys, torch, transformers
from safetensors.torch import save_file
assert transformers.__version__.startswith("4."), transformers.__version__
ids = torch.tensor([[int(x) for x in sys.argv[3].split(",")]])
dtype = getattr(torch, sys.argv[4])
config = transformers.AutoConfig.from_pretrained(sys.argv[1])
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=dtype).eval()
with torch.no_grad():
    save_file({"logits": model(ids).logits.float().contiguous()}, sys.argv[2])
print(transformers.__version__, type(config).__name__, type(model).__name__)
"""


def transformers4_logits(directory: Path, input_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, str]:
    """(logits [batch, seq, vocab] float32, "version ConfigClass ModelClass") from transformers 4.x."""
    from safetensors.torch import load_file

    if TRANSFORMERS4_PYTHON is None:
        pytest.fail(_MISSING)
    ids = ",".join(str(int(i)) for i in input_ids[0].tolist())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.safetensors"
        done = subprocess.run(
            [TRANSFORMERS4_PYTHON, "-c", _SCRIPT, str(directory), str(out), ids, str(dtype).removeprefix("torch.")],
            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return load_file(str(out))["logits"], done.stdout.strip().splitlines()[-1]
