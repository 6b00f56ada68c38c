"""Importing the client must not import torch or megatron (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
import {module}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'megatron', 'tqdm', 'xxhash', 'numpy', 'megaload'}})
print(json.dumps(heavy))
"""


@pytest.mark.parametrize("module", ["megaload_client", "megaload_client.__main__"])
def test_import_is_light(module):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_public_names_are_exported():
    import megaload_client

    missing = [name for name in megaload_client.__all__ if not hasattr(megaload_client, name)]
    assert missing == []
