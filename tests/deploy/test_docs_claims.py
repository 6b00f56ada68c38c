"""What the deployment guide says about defaults is what the code does: the default memory budget
(its shares per device, and on CPU the container's memory limit read from the cgroup files)."""

from __future__ import annotations

import re
from pathlib import Path

from megaload.devices import _CGROUP_LIMIT_FILES
from megaload.runtime import DEFAULT_BUDGET_FRACTION

REPO = Path(__file__).resolve().parents[2]


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start : end if end != -1 else None].split())


def test_deploy_guide_states_the_default_memory_budget_the_code_applies():
    section = _section((REPO / "docs" / "deploy.md").read_text(), "Memory budget in a container")
    assert f"on CUDA {DEFAULT_BUDGET_FRACTION['cuda']:.0%}" in section, section
    assert f"on CPU {DEFAULT_BUDGET_FRACTION['cpu']:.0%} of the host's RAM or of the container's memory limit" in section
    for path in _CGROUP_LIMIT_FILES:  # the files devices.cgroup_memory_limit reads
        assert f"`{Path(path).name}`" in section, path
    assert not re.search(r"ignor\w+ the container", section)
