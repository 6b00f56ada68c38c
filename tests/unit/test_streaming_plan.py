"""The shard planner: options, key filters, skipped entries, sharding and the index."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch

from megaload.streaming import (
    MAX_KEY_PATTERN_LENGTH,
    MAX_KEY_PATTERNS,
    MAX_MAX_SHARD_BYTES,
    MIN_MAX_SHARD_BYTES,
    InvalidKeyPatternError,
    InvalidShardOptionsError,
    KeysNotFoundError,
    ShardNotFoundError,
    ShardOptions,
    TensorSpec,
    plan_shards,
)

MiB = 1 << 20


def header_of(shard) -> dict:
    (n,) = struct.unpack("<Q", shard.header[:8])
    return json.loads(shard.header[8 : 8 + n])


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("value", [MIN_MAX_SHARD_BYTES - 1, 0, -5, MAX_MAX_SHARD_BYTES + 1])
def test_max_shard_bytes_out_of_bounds_names_field_and_limit(value):
    with pytest.raises(InvalidShardOptionsError) as info:
        ShardOptions(max_shard_bytes=value)
    assert info.value.field == "max_shard_bytes"
    assert info.value.limit in (MIN_MAX_SHARD_BYTES, MAX_MAX_SHARD_BYTES)
    assert str(info.value.limit) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [True, 1.5 * MiB, "1048576", None])
def test_max_shard_bytes_must_be_an_int(value):
    with pytest.raises(InvalidShardOptionsError) as info:
        ShardOptions(max_shard_bytes=value)
    assert info.value.field == "max_shard_bytes"


def test_max_shard_bytes_bounds_are_inclusive():
    assert ShardOptions(max_shard_bytes=MIN_MAX_SHARD_BYTES).max_shard_bytes == 1 * MiB
    assert ShardOptions(max_shard_bytes=MAX_MAX_SHARD_BYTES).max_shard_bytes == 64 << 30


@pytest.mark.parametrize("dtype", ["bf16", torch.int8, torch.bool, torch.complex64, 16])
def test_dtype_must_be_a_floating_torch_dtype(dtype):
    with pytest.raises(InvalidShardOptionsError) as info:
        ShardOptions(dtype=dtype)
    assert info.value.field == "dtype"


@pytest.mark.parametrize(
    "pattern",
    # invalid anywhere; then what only a backtracking engine runs (back-reference, look-around,
    # atomic group, possessive quantifier), and RE2's \Q quoting
    ["decoder.(", "[a-", "*x", "a{2,1}", r"(a)\1", "(?=a)", "(?<!a)b", "(?>a)", "a++", r"\Qa.b"],
)
def test_bad_regex_is_a_typed_error_naming_the_pattern(pattern):
    with pytest.raises(InvalidKeyPatternError) as info:
        ShardOptions(keys=["ok", pattern])
    assert info.value.pattern == pattern
    assert info.value.field == "keys"
    assert repr(pattern) in str(info.value)
    assert isinstance(info.value, InvalidShardOptionsError)


def test_keys_match_at_the_start_any_of_them_on_a_linear_engine():
    options = ShardOptions(keys=["decoder.layers.0.", r"embedding\.(?:word|position)_embeddings"])
    assert options.matches("decoder.layers.0.mlp.weight") and options.matches("decoder.layers.0Xfoo")
    assert options.matches("embedding.word_embeddings.weight")
    assert not options.matches("model.decoder.layers.0.mlp.weight")  # anchored at the start only
    assert not options.matches("decoder.layers.1.mlp.weight")
    # Python's re backtracks for minutes on this per key; the filter answers, and is right.
    catastrophic = ShardOptions(keys=["(?:.|.){1,26}!"])
    assert not catastrophic.matches("x" * 10_000)
    assert catastrophic.matches("abc!")
    assert ShardOptions(keys=["caf\u00e9\\."]).matches("caf\u00e9.weight")
    # two patterns may use the same group name: groups only group
    assert ShardOptions(keys=["(?P<n>a)", "(?P<n>b)"]).matches("b")


def test_a_pattern_set_too_large_to_compile_is_refused():
    with pytest.raises(InvalidKeyPatternError, match="larger than"):
        ShardOptions(keys=[r"\pL{1,1000}"])


def test_keys_caps_on_count_and_length():
    ShardOptions(keys=["a"] * MAX_KEY_PATTERNS)
    with pytest.raises(InvalidShardOptionsError) as info:
        ShardOptions(keys=["a"] * (MAX_KEY_PATTERNS + 1))
    assert info.value.limit == MAX_KEY_PATTERNS
    ShardOptions(keys=["a" * MAX_KEY_PATTERN_LENGTH])
    with pytest.raises(InvalidShardOptionsError) as info:
        ShardOptions(keys=["a" * (MAX_KEY_PATTERN_LENGTH + 1)])
    assert info.value.limit == MAX_KEY_PATTERN_LENGTH
    with pytest.raises(InvalidShardOptionsError):
        ShardOptions(keys=[3])


def test_options_are_hashable_and_compare_by_value():
    a = ShardOptions(max_shard_bytes=2 * MiB, dtype=torch.bfloat16, keys=["x", "y"])
    b = ShardOptions(max_shard_bytes=2 * MiB, dtype=torch.bfloat16, keys=("x", "y"))
    assert a == b and hash(a) == hash(b)
    assert a != ShardOptions(max_shard_bytes=2 * MiB, dtype=torch.bfloat16, keys=("y", "x"))
    assert ShardOptions(keys="x").keys == ("x",)


# ------------------------------------------------------------------ key filters


STATE_NAMES = [
    "embedding.word_embeddings.weight",
    "decoder.layers.0.self_attention.linear_qkv.weight",
    "decoder.layers.0.mlp.linear_fc1.weight",
    "decoder.layers.1.self_attention.linear_qkv.weight",
    "decoder.layers.10.mlp.linear_fc1.weight",
    "decoder.final_layernorm.weight",
    "output_layer.weight",
]


def small_state():
    return {name: torch.zeros(i + 1, 2) for i, name in enumerate(STATE_NAMES)}


@pytest.mark.parametrize(
    "keys, expected",
    [
        ([], STATE_NAMES),
        (["decoder.layers.0."], STATE_NAMES[1:3]),
        (["decoder.layers.1"], STATE_NAMES[3:5]),  # a prefix: layers.10 too
        (["decoder\\.layers\\.1\\."], STATE_NAMES[3:4]),
        (["output_layer", "embedding"], [STATE_NAMES[0], STATE_NAMES[6]]),
        ([r"decoder\.layers\.\d+\.mlp"], [STATE_NAMES[2], STATE_NAMES[4]]),
        ([".*layers.*qkv"], [STATE_NAMES[1], STATE_NAMES[3]]),
    ],
)
def test_keys_match_at_start_and_are_or_ed(keys, expected):
    plan = plan_shards(small_state(), ShardOptions(keys=keys))
    assert list(plan.tensors) == expected  # input order kept


@pytest.mark.parametrize("keys", [["nothing"], ["layers"], ["nothing", "model.decoder"]])  # "layers": at the start only
def test_a_filter_matching_no_key_is_an_error_naming_the_prefixes_there_are(keys):
    with pytest.raises(KeysNotFoundError) as info:
        plan_shards(small_state(), ShardOptions(keys=keys))
    error = info.value
    assert isinstance(error, LookupError) and error.field == "keys" and error.patterns == tuple(keys)
    assert error.key_prefixes == [
        "embedding.word_embeddings", "decoder.layers", "decoder.final_layernorm", "output_layer.weight"
    ]
    assert all(repr(k) in str(error) for k in keys)
    assert "decoder.layers, decoder.final_layernorm" in str(error) and "7 keys" in str(error)


def test_a_filter_matching_only_skipped_entries_is_no_error():
    plan = plan_shards({"a.weight": torch.ones(1), "b._extra_state": None}, ShardOptions(keys=["b"]))
    assert plan.shard_count == 0 and [s.name for s in plan.skipped] == ["b._extra_state"]


def test_no_filter_on_an_empty_state_dict_gives_an_empty_plan():
    plan = plan_shards({})
    assert plan.shard_count == 0 and plan.total_size == 0
    assert plan.hf_index() == {"metadata": {"total_size": 0}, "weight_map": {}}
    with pytest.raises(ShardNotFoundError):
        plan.shard(0)
    with pytest.raises(KeysNotFoundError, match="it has no keys"):
        plan_shards({}, ShardOptions(keys=["x"]))


# ------------------------------------------------------------------ skipped entries


def test_non_tensors_and_extra_state_are_skipped_with_reasons():
    state = {
        "a.weight": torch.ones(2),
        "a._extra_state": io.BytesIO(b"te"),
        "b._extra_state": torch.zeros(4, dtype=torch.uint8),
        "c.none": None,
        "d.bytes": b"abc",
        "e.sparse": torch.eye(3).to_sparse(),
        "f.u8": torch.zeros(2, dtype=torch.uint8),  # kept: U8
        "__metadata__": torch.ones(1),
        "g.e8m0": torch.zeros(2, dtype=torch.float8_e8m0fnu),
        "h.weight": torch.ones(3),
    }
    plan = plan_shards(state)
    assert list(plan.tensors) == ["a.weight", "f.u8", "h.weight"]
    reasons = {s.name: s.reason for s in plan.skipped}
    assert list(reasons) == ["a._extra_state", "b._extra_state", "c.none", "d.bytes", "e.sparse", "__metadata__", "g.e8m0"]
    assert "extra state" in reasons["a._extra_state"] and "extra state" in reasons["b._extra_state"]
    assert "NoneType" in reasons["c.none"] and "bytes" in reasons["d.bytes"]
    assert "sparse" in reasons["e.sparse"] and "reserved" in reasons["__metadata__"]
    assert "float8_e8m0fnu" in reasons["g.e8m0"]
    body = plan.to_dict()
    assert body["skipped"] == list(reasons) and body["skipped_reasons"] == reasons


def test_key_filter_applies_before_listing_skipped():
    state = {"x._extra_state": None, "y.w": torch.ones(1), "y._extra_state": None}
    plan = plan_shards(state, ShardOptions(keys=["y"]))
    assert [s.name for s in plan.skipped] == ["y._extra_state"]


# ------------------------------------------------------------------ sharding


def test_greedy_sharding_in_input_order_and_big_tensors_alone():
    sizes_mib = [0.25, 0.5, 0.25, 3, 0.5, 0.5, 0.5, 1]  # fp32 tensors
    state = {f"t{i}": torch.zeros(int(s * MiB) // 4) for i, s in enumerate(sizes_mib)}
    plan = plan_shards(state, ShardOptions(max_shard_bytes=1 * MiB))
    assert [list(s.names) for s in plan.shards] == [
        ["t0", "t1", "t2"],  # exactly 1 MiB fits
        ["t3"],  # over the bound: alone
        ["t4", "t5"],
        ["t6"],
        ["t7"],
    ]
    assert [s.filename for s in plan.shards] == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    assert [s.index for s in plan.shards] == list(range(5))
    assert plan.total_size == sum(int(s * MiB) for s in sizes_mib)
    for shard in plan.shards:
        assert shard.size == shard.header_size + sum(state[n].numel() * 4 for n in shard.names)
        assert shard.tensor_count == len(shard.names)
        assert shard.header_size % 8 == 0


def test_one_shard_still_uses_hf_numbered_name():
    plan = plan_shards({"w": torch.ones(1)})
    assert plan.weight_map == {"w": "model-00001-of-00001.safetensors"}


def test_shard_lookup_rejects_bad_indexes():
    plan = plan_shards({"w": torch.ones(1)})
    assert plan.shard(0).index == 0
    for bad in (-1, 1, True, "0", 0.0):
        with pytest.raises(ShardNotFoundError) as info:
            plan.shard(bad)
        assert info.value.shard_count == 1
        assert isinstance(info.value, LookupError)


def test_header_describes_the_planned_entries():
    state = {"b": torch.ones(2, 3, dtype=torch.bfloat16), "a": torch.ones(4, dtype=torch.int32)}
    plan = plan_shards(state)
    header = header_of(plan.shards[0])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}
    assert header["b"] == {"dtype": "BF16", "shape": [2, 3], "data_offsets": [16, 28]}
    entry = plan.tensors["b"]
    assert entry.file_offset == plan.shards[0].header_size + 16 and entry.nbytes == 12


# ------------------------------------------------------------------ dtype casting in the plan


def test_cast_changes_floating_tensors_only_and_total_size():
    state = {
        "w": torch.zeros(10),
        "h": torch.zeros(10, dtype=torch.float16),
        "ids": torch.zeros(10, dtype=torch.int64),
        "mask": torch.zeros(10, dtype=torch.bool),
    }
    plan = plan_shards(state, ShardOptions(dtype=torch.bfloat16))
    assert {n: e.dtype for n, e in plan.tensors.items()} == {
        "w": torch.bfloat16,
        "h": torch.bfloat16,
        "ids": torch.int64,
        "mask": torch.bool,
    }
    assert plan.tensors["w"].source_dtype == torch.float32
    assert plan.total_size == 20 + 20 + 80 + 10
    header = header_of(plan.shards[0])
    assert header["w"]["dtype"] == "BF16" and header["ids"]["dtype"] == "I64"


# ------------------------------------------------------------------ metadata-only planning


def test_plan_from_specs_and_meta_tensors_equals_plan_from_tensors():
    gen = torch.Generator().manual_seed(0)
    real = {
        "a": torch.randn(100, 30, generator=gen),
        "b": torch.randn(5, generator=gen).to(torch.bfloat16),
        "c": torch.arange(7),
        "x": None,
    }
    specs = {n: (TensorSpec(tuple(t.shape), t.dtype) if t is not None else None) for n, t in real.items()}
    meta = {n: (t.to("meta") if t is not None else None) for n, t in real.items()}
    options = ShardOptions(max_shard_bytes=1 * MiB, dtype=torch.float16)
    p_real, p_spec, p_meta = (plan_shards(s, options) for s in (real, specs, meta))
    assert p_real == p_spec == p_meta
    assert [s.header for s in p_real.shards] == [s.header for s in p_spec.shards]


def test_plan_is_deterministic():
    a = plan_shards(small_state(), ShardOptions(max_shard_bytes=1 * MiB))
    b = plan_shards(small_state(), ShardOptions(max_shard_bytes=1 * MiB))
    assert a == b and a.to_dict() == b.to_dict()


# ------------------------------------------------------------------ index


def test_index_dict_is_json_and_hf_shaped():
    state = small_state()
    state["z._extra_state"] = None
    plan = plan_shards(state)
    body = json.loads(json.dumps(plan.to_dict()))
    assert body["metadata"] == {"total_size": plan.total_size}
    assert body["total_size"] == sum(t.numel() * 4 for n, t in state.items() if t is not None)
    assert list(body["weight_map"]) == STATE_NAMES
    assert body["shards"][0]["size"] == plan.shards[0].size
    assert body["shards"][0]["tensor_count"] == len(STATE_NAMES)
    assert body["checksums"] == {} and body["checksum_algorithm"] == "xxh3_64"
    assert body["options"] == {"max_shard_bytes": 512 * MiB, "dtype": None, "keys": []}


def test_index_dict_parses_as_the_client_wire_model():
    models = pytest.importorskip("megaload_client.types")
    plan = plan_shards(small_state(), ShardOptions(max_shard_bytes=1 * MiB))
    index = models.StateDictIndex.model_validate(plan.to_dict())
    assert index.total_size == plan.total_size
    assert [s.size for s in index.shards] == [s.size for s in plan.shards]


def test_index_tensors_give_each_tensors_header_dtype_shape_and_shard():
    state = {**small_state(), "step": torch.tensor([3], dtype=torch.int64)}
    plan = plan_shards(state, ShardOptions(max_shard_bytes=1 * MiB, dtype=torch.bfloat16))
    body = json.loads(json.dumps(plan.to_dict()))
    assert list(body["tensors"]) == list(body["weight_map"])
    filenames = [s["filename"] for s in body["shards"]]
    for shard in plan.shards:
        header = json.loads(shard.header[8 : 8 + int.from_bytes(shard.header[:8], "little")])
        for name in shard.names:
            want = {"dtype": header[name]["dtype"], "shape": header[name]["shape"], "shard": shard.index}
            assert body["tensors"][name] == want
            assert filenames[want["shard"]] == body["weight_map"][name]
    assert body["tensors"]["step"]["dtype"] == "I64"  # integers are not cast
    assert {body["tensors"][n]["dtype"] for n in state if n != "step"} == {"BF16"}
    assert body["tensors"][STATE_NAMES[1]]["shape"] == [2, 2]
