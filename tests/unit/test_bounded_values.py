"""Bounded text for values from checkpoints: ``summarize``, error messages, and the YAML
loader's nesting and alias budgets (compared with ``yaml.safe_load`` on real run configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megaload.checkpoint import CorruptCheckpointError
from megaload.checkpoint._errors import MAX_MESSAGE_CHARS, MAX_SUMMARY_CHARS, summarize
from megaload.checkpoint._yaml import MAX_ALIAS_EXPANSION, MAX_DEPTH, YAMLBudgetError, load_yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"


def _shared_value(levels: int) -> list:
    """What a YAML alias bomb builds: each level a list of 9 references to the one below."""
    value: list = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


def test_summarize_is_bounded_for_any_value():
    bomb = _shared_value(7)  # expands to 9**8 = 43 million strings
    text = summarize(bomb)
    assert len(text) <= MAX_SUMMARY_CHARS and text.startswith("[[[")
    assert summarize("x" * 10**6).endswith("...") or "chars" in summarize("x" * 10**6)
    assert len(summarize("x" * 10**6)) <= MAX_SUMMARY_CHARS
    assert summarize(12) == "12" and summarize("abc") == "'abc'"
    assert summarize({"a": [1, 2]}) == "{'a': [1, 2]}"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "Hostile" in summarize(Hostile())


def test_error_messages_are_bounded():
    err = CorruptCheckpointError("bad: " + "y" * 10**6, path="/x")
    assert len(str(err)) <= MAX_MESSAGE_CHARS and "more characters" in str(err)
    assert str(CorruptCheckpointError("short", path="/x")) == "short"


def _run_configs() -> list[Path]:
    found = sorted(FIXTURES.glob("*/checkpoint/*/run_config.yaml")) + sorted(SHARED.glob("*/checkpoint/*/run_config.yaml"))
    assert found
    return found


@pytest.mark.parametrize("path", _run_configs(), ids=lambda p: p.parts[-4])
def test_real_run_configs_read_as_safe_load_reads_them(path):
    text = path.read_text()
    assert load_yaml(text) == yaml.safe_load(text)


def test_alias_expansion_budget():
    lines = ["b0: &b0 [" + ", ".join(["lol"] * 9) + "]"]
    for level in range(1, 8):
        lines.append(f"b{level}: &b{level} [" + ", ".join([f"*b{level - 1}"] * 9) + "]")
    with pytest.raises(YAMLBudgetError, match=str(MAX_ALIAS_EXPANSION)):
        load_yaml("\n".join(lines))
    # what PyYAML's dumper writes for an object referred to twice loads as before
    shared = {"k": [1, 2, 3]}
    text = yaml.safe_dump({"a": shared, "b": shared})
    assert "*id001" in text
    assert load_yaml(text) == {"a": shared, "b": shared}
    # merge keys count as aliases and work
    assert load_yaml("base: &b {x: 1}\nmore: {<<: *b, y: 2}") == {"base": {"x": 1}, "more": {"x": 1, "y": 2}}


def test_recursive_aliases_are_refused():
    with pytest.raises(YAMLBudgetError, match="contains it"):
        load_yaml("a: &a [1, *a]")


def test_depth_budget():
    assert load_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: " + "[" * 100_000 + "]" * 100_000)
    block = "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5))
    with pytest.raises(YAMLBudgetError, match="deeper"):
        load_yaml(block + " " * (MAX_DEPTH + 5) + "end: 1\n")


def test_tags_still_build_no_objects():
    with pytest.raises(yaml.YAMLError, match="constructor"):
        load_yaml("!!python/object/apply:os.system [echo hi]")
