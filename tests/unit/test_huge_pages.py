"""Huge pages for the memory a load fills (checkpoint/_huge_pages.py): the policy read from
MEGALOAD_HUGE_PAGES, the balloon check behind ``auto``, and advice the kernel really applies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from megaload.checkpoint import IncompatibleConfigError
from megaload.checkpoint import _huge_pages as hp

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false"])
def test_off_spellings_turn_it_off(monkeypatch, value):
    monkeypatch.setenv(hp.HUGE_PAGES_ENV, value)
    assert hp.huge_pages_enabled() is False


@pytest.mark.parametrize("value", ["on", "1", "true"])
def test_on_spellings_turn_it_on_on_linux(monkeypatch, value):
    monkeypatch.setenv(hp.HUGE_PAGES_ENV, value)
    assert hp.huge_pages_enabled() is (sys.platform == "linux")


def test_a_bad_value_is_a_typed_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(hp.HUGE_PAGES_ENV, "sometimes")
    with pytest.raises(IncompatibleConfigError, match="MEGALOAD_HUGE_PAGES='sometimes'") as info:
        hp.huge_pages_enabled()
    assert info.value.field == hp.HUGE_PAGES_ENV


def _fake_sys(tmp_path: Path, thp: str, balloon_features: str | None) -> Path:
    (tmp_path / "kernel/mm/transparent_hugepage").mkdir(parents=True)
    (tmp_path / "kernel/mm/transparent_hugepage/enabled").write_text(thp + "\n")
    driver = tmp_path / "bus/virtio/drivers/virtio_balloon"
    driver.mkdir(parents=True)
    (driver / "bind").write_text("")
    if balloon_features is not None:
        (driver / "virtio3").mkdir()
        (driver / "virtio3/features").write_text(balloon_features + "\n")
    return tmp_path


# the kernel's features file: one character per feature bit, bit 0 first; bit 5 is
# VIRTIO_BALLOON_F_REPORTING (free page reporting), bits 1 and 2 stats and deflate-on-oom
REPORTING = "0110010100000000000000000000000010000000"
NO_REPORTING = "0110000100000000000000000000000010000000"


@pytest.mark.parametrize(
    "thp, features, expected",
    [
        ("always [madvise] never", None, True),
        ("[always] madvise never", NO_REPORTING, True),
        ("always [madvise] never", REPORTING, False),
        ("always madvise [never]", None, False),
    ],
)
def test_auto_is_on_unless_thp_is_off_or_a_balloon_reports_free_pages(monkeypatch, tmp_path, thp, features, expected):
    if sys.platform != "linux":
        pytest.skip("huge pages are a Linux feature")
    monkeypatch.setattr(hp, "_SYS", _fake_sys(tmp_path, thp, features))
    hp._auto.cache_clear()
    monkeypatch.delenv(hp.HUGE_PAGES_ENV, raising=False)
    try:
        assert hp.huge_pages_enabled() is expected
    finally:
        hp._auto.cache_clear()


def _vm_flags_at(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (``hg``: advised for
    huge pages, MADV_HUGEPAGE)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    return set()


def test_advice_lands_on_the_tensor_memory_and_keeps_its_values():
    """The kernel records the advice on the tensor's own pages (whether it then finds free huge
    pages is up to it: best effort, under fragmentation it falls back to small pages)."""
    if sys.platform != "linux" or not THP_MODE.exists() or "[never]" in THP_MODE.read_text():
        pytest.skip("needs Linux with transparent huge pages not disabled")
    # 64 MiB: above glibc's largest mmap threshold, so a mapping of its own
    big = torch.empty(64 << 20, dtype=torch.uint8)
    small = torch.empty(1 << 20, dtype=torch.uint8)
    assert "hg" not in _vm_flags_at(big.data_ptr() + (32 << 20))
    # a view of the same storage counts once; the 1 MiB tensor, under one huge page, not at all
    advised = hp.advise_huge_pages([big, big[1:], small])
    assert 60 << 20 <= advised <= 64 << 20
    assert "hg" in _vm_flags_at(big.data_ptr() + (32 << 20))
    big.fill_(7)
    assert torch.equal(big[:: 1 << 20], torch.full((64,), 7, dtype=torch.uint8))


def test_tensors_not_in_cpu_memory_are_left_alone():
    assert hp.advise_huge_pages([torch.empty(4 << 20, dtype=torch.uint8, device="meta")]) == 0


def test_the_service_setting_reaches_the_library_as_its_variable(monkeypatch):
    """``--huge-pages`` / MEGALOAD_HUGE_PAGES of the service: the engine sets the library's
    variable once at start-up (engine/_process.py names it without importing the library)."""
    from megaload.engine import _process
    from megaload.settings import Settings

    assert _process.HUGE_PAGES_ENV == hp.HUGE_PAGES_ENV
    monkeypatch.setenv(hp.HUGE_PAGES_ENV, "auto")
    _process.set_huge_page_policy(Settings(huge_pages="off").huge_pages)
    assert hp.huge_pages_enabled() is False
    with pytest.raises(ValueError, match="huge_pages"):
        Settings(huge_pages="sometimes")
