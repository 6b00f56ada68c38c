"""Progress bars: tqdm only when asked for and installed."""

from __future__ import annotations

import sys
from datetime import UTC

import pytest

from megaload_client._progress import progress_bar


def test_no_bar_unless_asked():
    bar = progress_bar(False, total=10, desc="x")
    assert bar._bar is None
    bar.update(5)
    bar.set_to(3, "phase")
    bar.close()


def test_tqdm_bar_follows_updates(capsys):
    with progress_bar(True, total=100, desc="download", unit="B") as bar:
        bar.update(40)
        bar.update(-10)  # a shard started over
        assert bar._bar.n == 30
        bar.set_to(75, "writing")
        assert bar._bar.n == 75
    assert "download" not in capsys.readouterr().out  # tqdm writes to stderr


def test_asking_without_tqdm_warns_and_carries_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes the import fail
    with pytest.warns(RuntimeWarning, match="needs tqdm"):
        bar = progress_bar(True, total=10, desc="x")
    assert bar._bar is None
    bar.update(1)


def test_a_load_jobs_bar_text_shows_the_bytes_read():
    from datetime import datetime

    from megaload_client._handles import _phase_text
    from megaload_client.types import Job

    now = datetime.now(UTC)
    job = Job(id="j", kind="load", state="running", progress=0.5, phase="loading", created_at=now,
              bytes_read=3 << 29, bytes_to_read=3 << 30)  # fmt: skip
    assert _phase_text(job) == "loading 1.5 GiB/3.0 GiB"
    assert _phase_text(job.model_copy(update={"bytes_read": None, "bytes_to_read": None})) == "loading"
    assert _phase_text(job.model_copy(update={"state": "succeeded", "phase": "done"})) == "done"
