"""A load inside ``reporting_read_progress`` reports the bytes of tensor records it has read,
as they land (the service's load jobs show them); outside the block nothing is counted."""

from __future__ import annotations

from upstream_fixtures import FIXTURES_DIR

from megaload.checkpoint import load_megatron_model, reporting_read_progress


def test_a_load_reports_its_reads_in_order_up_to_the_whole():
    path = FIXTURES_DIR / "mlm_gpt" / "checkpoint"
    calls: list[tuple[int, int]] = []
    with reporting_read_progress(lambda done, total: calls.append((done, total))):
        load_megatron_model(path, return_state_dict=True, use_cpu_init=True)
    assert calls, "no progress reported"
    done = [d for d, _ in calls]
    assert done == sorted(done) and len({t for _, t in calls}) == 1
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    # every tensor record is counted once: the records are most of the data files' bytes
    # (the rest are the _extra_state items, read apart)
    data_bytes = sum(f.stat().st_size for f in path.rglob("*.distcp"))
    assert 0.5 * data_bytes < total <= data_bytes
    assert len(calls) <= 102  # at most about one report per 1 % and the last


def test_nothing_is_reported_outside_the_block():
    calls: list[tuple[int, int]] = []
    with reporting_read_progress(lambda done, total: calls.append((done, total))):
        pass
    load_megatron_model(FIXTURES_DIR / "mlm_gpt" / "checkpoint", return_state_dict=True, use_cpu_init=True)
    assert calls == []


def test_a_listener_that_fails_does_not_fail_the_load(caplog, references, flatten_state_dict, assert_bitwise_equal):
    """E.g. the service's listener once its event loop has closed: the load completes, with the
    upstream loader's tensors, warned once."""
    calls = []

    def broken(done, total):
        calls.append(done)
        raise RuntimeError("Event loop is closed")

    with reporting_read_progress(broken):
        state = load_megatron_model(references.save_dir("mlm_gpt"), return_state_dict=True, use_cpu_init=True)
    assert len(calls) == 1
    assert len([r for r in caplog.records if "progress listener failed" in r.getMessage()]) == 1
    tensors, _ = flatten_state_dict(state)
    assert_bitwise_equal(tensors, references.state_dict("mlm_gpt"))
