"""One size syntax for every size a command line or setting takes (megaload_client.sizes)."""

from __future__ import annotations

import pytest

from megaload.__main__ import _parse_size as export_hf_size
from megaload.__main__ import build_parser, settings_from_args
from megaload.settings import MemoryBudget
from megaload_client._cli import build_parser as client_parser
from megaload_client.sizes import format_size, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1MiB", 2**20), ("1 mib", 2**20), ("1.5GiB", int(1.5 * 2**30)), ("64KiB", 65536), ("2TiB", 2 * 2**40),
        ("500MB", 500 * 10**6), ("5GB", 5 * 10**9), ("5G", 5 * 10**9), ("7k", 7000), ("123456", 123456),
        ("10B", 10), (" 3 MB ", 3 * 10**6), (4096, 4096),
    ],
)
def test_spellings(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "5 parsecs", "-5", "0", "0MiB", "1e9", "1.5", "MiB", True, 0, -1])
def test_refusals_say_what_is_accepted(text):
    with pytest.raises(ValueError, match=r"size|unit|whole number|positive"):
        parse_size(text)


def test_format_is_binary():
    assert [format_size(n) for n in (None, 0, 512, 1024, 4_456_448, 3 * 2**30, 5 * 2**40)] == [
        "-", "0 B", "512 B", "1.0 KiB", "4.2 MiB", "3.0 GiB", "5.0 TiB"
    ]


@pytest.mark.parametrize("text", ["1MiB", "1.5 GiB", "500MB", "123456"])
def test_every_size_option_of_both_clis_takes_the_same_syntax(text):
    want = parse_size(text)
    assert export_hf_size(text) == want  # megaload export-hf --max-shard-size
    serve = settings_from_args(build_parser().parse_args(["serve", "--memory-budget", text]))
    assert serve.memory_budget == MemoryBudget(bytes=want)  # megaload serve --memory-budget
    args = client_parser().parse_args(["download", "m", "d", "--max-shard-bytes", text])
    assert args.max_shard_bytes == want  # megaload-client download --max-shard-bytes
    args = client_parser().parse_args(["index", "m", "--max-shard-bytes", text])
    assert args.max_shard_bytes == want


def test_a_bad_size_names_the_option():
    with pytest.raises(SystemExit, match="--max-shard-size.*not a size"):
        export_hf_size("lots")
