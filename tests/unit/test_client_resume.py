"""Resume bookkeeping: Range requests, what 200/206 answers mean, sinks."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from megaload_client import IntegrityError
from megaload_client._resume import BufferSink, FileSink, ShardTransfer, is_strong_etag, parse_content_range
from megaload_client._writeback import WRITEBACK_BYTES, Writeback


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-9/10", (0, 9, 10)),
        ("bytes 5-5/6", (5, 5, 6)),
        ("BYTES 3-7/*", (3, 7, None)),
        ("bytes 7-3/10", None),
        ("bytes 0-10/10", None),
        ("bytes */10", None),
        ("items 0-1/2", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value, expected):
    assert parse_content_range(value) == expected


def test_strong_and_weak_etags():
    assert is_strong_etag('"abc"')
    assert not is_strong_etag('W/"abc"')
    assert not is_strong_etag("abc")
    assert not is_strong_etag(None)


def test_first_request_asks_for_everything():
    transfer = ShardTransfer(BufferSink(10), 10)
    assert transfer.request_headers() == {"Accept-Encoding": "identity"}


def test_resume_asks_for_the_rest_against_the_etag():
    sink = BufferSink(10)
    transfer = ShardTransfer(sink, 10)
    transfer.begin(200, {"content-length": "10", "etag": '"v1"'})
    transfer.write(b"abcd")
    headers = transfer.request_headers()
    assert headers["Range"] == "bytes=4-"
    assert headers["If-Range"] == '"v1"'
    transfer.begin(206, {"content-range": "bytes 4-9/10", "etag": '"v1"'})
    transfer.write(b"efghij")
    transfer.finish()
    assert bytes(sink.buffer) == b"abcdefghij"


def test_weak_etag_is_not_sent_as_if_range():
    transfer = ShardTransfer(BufferSink(4), 4)
    transfer.begin(200, {"content-length": "4", "etag": 'W/"v1"'})
    transfer.write(b"ab")
    assert "If-Range" not in transfer.request_headers()


def test_a_200_answer_to_a_range_request_starts_over():
    sink = BufferSink(6)
    rewound = []
    transfer = ShardTransfer(sink, 6, etag='"old"', on_restart=rewound.append)
    transfer.write(b"xyz")
    transfer.begin(200, {"content-length": "6", "etag": '"new"'})
    assert transfer.offset == 0 and transfer.restarts == 1 and rewound == [3]
    assert transfer.etag == '"new"'
    transfer.write(b"abcdef")
    transfer.finish()
    assert bytes(sink.buffer) == b"abcdef"


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"content-range": "bytes 3-9/10"}, "from 4, got from 3"),
        ({"content-range": "bytes 4-8/10"}, "got to 9"),
        ({"content-range": "bytes 4-10/11"}, "index announced 10"),
        ({"content-range": "nonsense"}, "invalid Content-Range"),
        ({"content-range": "bytes 4-9/10", "etag": '"v2"'}, "ETag changed"),
        ({"content-range": "bytes 4-9/10", "content-encoding": "gzip"}, "Content-Encoding"),
    ],
)
def test_inconsistent_partial_answers_are_refused(headers, message):
    transfer = ShardTransfer(BufferSink(10), 10, etag='"v1"')
    transfer.write(b"abcd")
    with pytest.raises(IntegrityError, match=message):
        transfer.begin(206, headers)


def test_full_answer_of_the_wrong_size_is_refused():
    transfer = ShardTransfer(BufferSink(10), 10)
    with pytest.raises(IntegrityError, match="index announced 10"):
        transfer.begin(200, {"content-length": "11"})


def test_unexpected_status_is_refused():
    with pytest.raises(IntegrityError, match="unexpected status 204"):
        ShardTransfer(BufferSink(1), 1).begin(204, {})


def test_more_bytes_than_announced_are_refused():
    transfer = ShardTransfer(BufferSink(3), 3)
    transfer.begin(200, {"content-length": "3"})
    with pytest.raises(IntegrityError, match="more than the 3 bytes"):
        transfer.write(b"abcd")


def test_finish_refuses_a_short_shard():
    transfer = ShardTransfer(BufferSink(3), 3)
    transfer.write(b"ab")
    with pytest.raises(IntegrityError, match="received 2 bytes, expected 3"):
        transfer.finish()


def test_size_learnt_from_the_first_answer_when_not_given():
    transfer = ShardTransfer(BufferSink(5), None)
    transfer.begin(200, {"content-length": "5"})
    assert transfer.expected_size == 5


def test_file_sink_resumes_after_what_the_file_holds_and_resets(tmp_path):
    path = tmp_path / "a.incomplete"
    path.write_bytes(b"abc")
    sink = FileSink(path)
    assert sink.size == 3
    transfer = ShardTransfer(sink, 6)
    assert transfer.request_headers()["Range"] == "bytes=3-"
    transfer.begin(206, {"content-range": "bytes 3-5/6"})
    transfer.write(b"def")
    sink.close()
    assert path.read_bytes() == b"abcdef"

    again = FileSink(path)
    again.reset()
    again.write(memoryview(b"xy"))
    again.close()
    assert path.read_bytes() == b"xy"


def _dirty_pages(fd: int) -> int:
    """Dirty page-cache pages of the file open on ``fd`` (Linux ``cachestat``, 6.5+)."""
    import ctypes

    class Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class Stat(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]

    libc = ctypes.CDLL(None, use_errno=True)
    span, stat = Range(0, 0), Stat()
    if libc.syscall(451, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:  # __NR_cachestat (x86-64)
        pytest.skip(f"cachestat unavailable (errno {ctypes.get_errno()})")
    return stat.dirty


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="cachestat on x86-64 Linux")
def test_file_sink_starts_writeback_while_it_is_written(tmp_path):
    chunk = memoryview(bytes(range(256)) * 4096)  # 1 MiB
    total = 8 * WRITEBACK_BYTES
    control = tmp_path / "plain.bin"
    with open(control, "wb") as f:
        for _ in range(total // len(chunk)):
            f.write(chunk)
        f.flush()
        if _dirty_pages(f.fileno()) * 4096 < total // 2:
            pytest.skip("the control file is not dirty after writing it (already written back, or tmpfs)")
        os.fsync(f.fileno())
        if _dirty_pages(f.fileno()):
            pytest.skip("this file system keeps pages dirty after fsync (tmpfs?): no writeback to observe")
    sink = FileSink(tmp_path / "a.incomplete")
    for _ in range(total // len(chunk)):
        sink.write(chunk)
    # all but the last unfinished stretch has been handed to the disk already
    assert _dirty_pages(sink._file.fileno()) * 4096 <= WRITEBACK_BYTES
    sink.close()
    assert (tmp_path / "a.incomplete").stat().st_size == total


def test_writeback_gives_up_quietly_where_the_kernel_refuses(tmp_path):
    read, write = os.pipe()  # sync_file_range on a pipe: ESPIPE
    try:
        writeback = Writeback(write, every=1)
        writeback.written(10)
        writeback.written(20)  # no exception, and no further attempts
        assert not writeback._enabled  # refused (ESPIPE), or no sync_file_range off Linux
    finally:
        os.close(read)
        os.close(write)
