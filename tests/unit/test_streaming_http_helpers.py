"""Range parsing, Content-Range values, ETags and conditional headers."""

from __future__ import annotations

import pytest
import torch

from megaload.streaming import (
    RangeNotSatisfiableError,
    ShardNotFoundError,
    ShardOptions,
    content_range,
    matches_if_none_match,
    matches_if_range,
    parse_range,
    plan_shards,
    shard_etag,
    unsatisfied_content_range,
)

SIZE = 1000


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-0", (0, 1)),  # first byte
        ("bytes=999-999", (999, 1000)),  # last byte
        ("bytes=-1", (999, 1000)),  # last byte as a suffix
        ("bytes=0-499", (0, 500)),
        ("bytes=500-", (500, 1000)),
        ("bytes=500-5000", (500, 1000)),  # last position clamped
        ("bytes=-500", (500, 1000)),
        ("bytes=-5000", (0, 1000)),  # suffix longer than the file
        ("bytes=0-", (0, 1000)),
        ("Bytes = 10-20", (10, 21)),  # unit is case-insensitive
        ("bytes=10-20,", (10, 21)),  # empty list elements are allowed
        ("bytes=0-" + "9" * 40, (0, 1000)),  # absurdly large last position
    ],
)
def test_single_ranges(header, expected):
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=5-4",  # invalid (last < first): ignored, not unsatisfiable
        "bytes=1-2-3",
        "bytes=-1-2",
        "bytes=+1-2",
        "items=0-10",
        "bytes=0-10,20-30",  # several ranges: unsupported, the whole file is sent
        "bytes=0-10, 2000-3000",
        "bytes=0-1" + ",0-1" * 5000,  # over the header length cap
    ],
)
def test_ignored_headers_give_none(header):
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000", "bytes=-0", "bytes=" + "9" * 30 + "-"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(RangeNotSatisfiableError) as info:
        parse_range(header, SIZE)
    assert info.value.size == SIZE
    assert info.value.range_header == header
    assert unsatisfied_content_range(info.value.size) == "bytes */1000"


def test_empty_file_satisfies_nothing():
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(header, 0)


def test_content_range_is_inclusive():
    assert content_range(0, 1, 1000) == "bytes 0-0/1000"
    assert content_range(500, 1000, 1000) == "bytes 500-999/1000"


# ------------------------------------------------------------------ ETags


def plan_for(options=None, state=None):
    state = state if state is not None else {"a": torch.ones(300_000), "b": torch.ones(300_000)}
    return plan_shards(state, options or ShardOptions(max_shard_bytes=1 << 20))


def test_etag_is_strong_quoted_and_stable():
    plan = plan_for()
    tag = shard_etag("model-1@2024", plan, 0)
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34 and not tag.startswith("W/")
    assert tag == shard_etag("model-1@2024", plan_for(), 0)


def test_etag_changes_with_identity_options_and_shard():
    plan = plan_for()
    base = shard_etag("m", plan, 0)
    assert shard_etag("m", plan, 1) != base
    assert shard_etag("m2", plan, 0) != base
    assert shard_etag("m", plan_for(ShardOptions(max_shard_bytes=4 << 20)), 0) != base
    assert shard_etag("m", plan_for(ShardOptions(max_shard_bytes=1 << 20, dtype=torch.bfloat16)), 0) != base
    assert shard_etag("m", plan_for(ShardOptions(max_shard_bytes=1 << 20, keys=["a"])), 0) != base
    other_shapes = plan_for(state={"a": torch.ones(300_001), "b": torch.ones(300_000)})
    assert shard_etag("m", other_shapes, 0) != base


def test_etag_of_missing_shard():
    with pytest.raises(ShardNotFoundError):
        shard_etag("m", plan_for(), 7)


def test_if_none_match():
    tag = '"abc"'
    assert matches_if_none_match('"abc"', tag)
    assert matches_if_none_match('W/"abc"', tag)  # weak comparison
    assert matches_if_none_match('"x", "abc"', tag)
    assert matches_if_none_match("*", tag)
    assert not matches_if_none_match(None, tag)
    assert not matches_if_none_match('"abcd"', tag)
    assert not matches_if_none_match("abc", tag)  # unquoted: malformed
    assert not matches_if_none_match('"x" junk', tag)


def test_if_range():
    tag = '"abc"'
    assert matches_if_range(None, tag)
    assert matches_if_range('"abc"', tag)
    assert not matches_if_range('W/"abc"', tag)  # strong comparison
    assert not matches_if_range('"old"', tag)
    assert not matches_if_range("Wed, 21 Oct 2015 07:28:00 GMT", tag)  # a date: no Last-Modified here
