"""GET /v1/models/{id}/state_dict and GET, HEAD /v1/models/{id}/state_dict/{n} against a real
server (tests/integration/conftest.py) with real fixture checkpoints and a generated one.

What the shards must hold comes from the library itself, run in a child process
(``library_models``): ``load_megatron_model(..., return_state_dict=True)`` flattened to tensors,
and the non-tensor keys of the built model's ``state_dict()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
import xxhash
from library_models import GENERATED_NAME, generate_gpt_checkpoint, library_state_dicts
from safetensors.torch import load_file
from upstream_fixtures import FIXTURE_NAMES, FIXTURES_DIR

from megaload_client import problems
from megaload_client.types import StateDictIndex

FIXTURES = ("mlm_gpt", "bridge_gpt_tied_rope_fp32")
MiB = 1 << 20


@pytest.fixture(scope="module")
def library(ckpt_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (tensors, non-tensor keys) as the library loads each checkpoint."""
    paths = [ckpt_root / name for name in FIXTURES] + [generate_gpt_checkpoint(ckpt_root)]
    found = library_state_dicts(paths, tmp_path_factory.mktemp("library"))
    return {path.name: found[path] for path in paths}


def _load(service, name: str) -> str:
    r = service.load(name)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def _index(service, model_id: str, params=()) -> dict:
    r = service.client.get(f"/v1/models/{model_id}/state_dict", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def _shard(service, model_id: str, n: int, params=(), headers=None, method: str = "GET") -> httpx.Response:
    return service.client.request(method, f"/v1/models/{model_id}/state_dict/{n}", params=params, headers=headers)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_raw(a), _raw(b))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _problem(r: httpx.Response, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == type_ and body["status"] == status
    return body


def _download(service, model_id: str, index: dict, params, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Every shard of ``index``, checked as a file: sizes, names, weight_map; merged tensors."""
    got: dict[str, torch.Tensor] = {}
    for shard in index["shards"]:
        r = _shard(service, model_id, shard["index"], params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == len(r.content) == shard["size"]
        path = tmp_path / shard["filename"]
        path.write_bytes(r.content)
        assert path.stat().st_size == shard["size"]
        tensors = load_file(str(path))
        assert sorted(tensors) == sorted(shard["names"]) and len(tensors) == shard["tensor_count"]
        assert all(index["weight_map"][name] == shard["filename"] for name in tensors)
        header = json.loads(r.content[8 : 8 + int.from_bytes(r.content[:8], "little")])
        for name, tensor in tensors.items():  # the index's tensors say what the header says
            info = index["tensors"][name]
            assert info == {"dtype": header[name]["dtype"], "shape": list(tensor.shape), "shard": shard["index"]}
        assert not set(tensors) & set(got)
        got.update(tensors)
    assert sorted(index["tensors"]) == sorted(index["weight_map"])
    return got


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mlm_gpt", {}),
        ("bridge_gpt_tied_rope_fp32", {}),
        (GENERATED_NAME, {"max_shard_bytes": 4 * MiB}),
    ],
)
def test_shards_equal_the_library_state_dict(service, library, tmp_path, name, params):
    expected, non_tensors = library[name]
    model_id = _load(service, name)
    index = _index(service, model_id, params)
    StateDictIndex.model_validate(index)  # what the client parses

    assert set(index["weight_map"]) == set(expected)
    assert index["total_size"] == index["metadata"]["total_size"] == sum(_nbytes(t) for t in expected.values())
    assert sorted(index["skipped"]) == sorted(non_tensors)
    assert all("extra state" in index["skipped_reasons"][k] for k in non_tensors)
    assert [s["index"] for s in index["shards"]] == list(range(len(index["shards"])))

    got = _download(service, model_id, index, params, tmp_path)
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert _same_bits(got[key], tensor), key
    assert index["checksum_algorithm"] == "xxh3_64"
    for key, tensor in got.items():
        assert index["checksums"][key] == xxhash.xxh3_64_hexdigest(_raw(tensor).numpy().tobytes()), key

    if "max_shard_bytes" in params:
        bound = params["max_shard_bytes"]
        assert len(index["shards"]) > 1
        for shard in index["shards"]:
            data = sum(_nbytes(expected[k]) for k in shard["names"])
            assert data <= bound or shard["tensor_count"] == 1, shard["filename"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_shards_equal_upstreams_state_dict(service, tmp_path, name):
    """Every fixture streams exactly what upstream's loader returns: the same keys, dtypes (bf16
    norms of Hugging Face imports included), byte counts in the index and the model's record,
    and bits."""
    reference = load_file(str(FIXTURES_DIR / name / "reference_state_dict.safetensors"))
    model_id = _load(service, name)
    index = _index(service, model_id)
    assert index["total_size"] == sum(_nbytes(t) for t in reference.values())
    assert {k: v["dtype"] for k, v in index["tensors"].items()} == {
        k: _SAFETENSORS_DTYPES[t.dtype] for k, t in reference.items()
    }
    record = service.client.get(f"/v1/models/{model_id}").json()
    assert record["size_bytes"] == index["total_size"]
    assert record["dtype"] == str(next(iter(reference.values())).dtype).removeprefix("torch.")
    got = _download(service, model_id, index, {}, tmp_path)
    assert set(got) == set(reference)
    for key, tensor in reference.items():
        assert _same_bits(got[key], tensor), key


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def test_ranges_of_a_fixture_shard(service):
    model_id = _load(service, "mlm_gpt")
    full = _shard(service, model_id, 0).content
    size = len(full)
    header_end = 8 + int.from_bytes(full[:8], "little")
    header = json.loads(full[8:header_end])
    first_end = min(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    boundary = header_end + first_end  # where the second tensor of the data section starts
    cases = {
        "bytes=0-0": (0, 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size),
        f"bytes={size - 1}-": (size - 1, size),
        "bytes=-1": (size - 1, size),
        "bytes=-100": (size - 100, size),
        f"bytes=-{size + 10}": (0, size),
        f"bytes={header_end - 4}-{header_end + 3}": (header_end - 4, header_end + 4),
        f"bytes={boundary - 3}-{boundary + 2}": (boundary - 3, boundary + 3),
        f"bytes=100-{size + 5000}": (100, size),
        "bytes=0-": (0, size),
    }
    for range_header, (start, end) in cases.items():
        r = _shard(service, model_id, 0, headers={"Range": range_header})
        assert r.status_code == 206, (range_header, r.text)
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{size}", range_header
        assert int(r.headers["content-length"]) == end - start
        assert r.content == full[start:end], range_header

    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        r = _shard(service, model_id, 0, headers={"Range": unsatisfiable})
        body = _problem(r, 416, problems.RANGE_NOT_SATISFIABLE)
        assert r.headers["content-range"] == f"bytes */{size}"
        assert str(size) in body["detail"]

    # Ranges the server may ignore (RFC 9110): several ranges, an invalid one, another unit.
    for ignored in ("bytes=0-1,4-5", "bytes=5-2", "items=0-1"):
        r = _shard(service, model_id, 0, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == full and "content-range" not in r.headers, ignored


def test_ranges_inside_and_across_tensors_of_a_generated_model(service, library):
    expected, _ = library[GENERATED_NAME]
    params = {"max_shard_bytes": 4 * MiB}
    model_id = _load(service, GENERATED_NAME)
    index = _index(service, model_id, params)

    def file_bytes(n: int, start: int, end: int) -> bytes:
        r = _shard(service, model_id, n, params, headers={"Range": f"bytes={start}-{end - 1}"})
        assert r.status_code == 206, r.text
        assert len(r.content) == end - start
        return r.content

    def layout(n: int) -> tuple[int, dict]:
        prefix = file_bytes(n, 0, 8)
        header_end = 8 + int.from_bytes(prefix, "little")
        header = json.loads(file_bytes(n, 8, header_end))
        header.pop("__metadata__", None)
        return header_end, header

    # Inside one large tensor, across the writer's 4 MiB chunk boundary, against the library's bytes.
    big = max(index["shards"], key=lambda s: s["size"])
    header_end, header = layout(big["index"])
    (name, entry), = header.items()
    raw = _raw(expected[name]).numpy().tobytes()
    lo = header_end + entry["data_offsets"][0]
    for a, b in ((4 * MiB - 8, 4 * MiB + 8), (0, 16), (len(raw) - 16, len(raw))):
        assert file_bytes(big["index"], lo + a, lo + b) == raw[a:b]

    # Across the boundary between two tensors of one shard.
    multi = next(s for s in index["shards"] if s["tensor_count"] > 1)
    header_end, header = layout(multi["index"])
    first, second = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])[:2]
    boundary = header_end + first[1]["data_offsets"][1]
    want = _raw(expected[first[0]]).numpy().tobytes()[-5:] + _raw(expected[second[0]]).numpy().tobytes()[:7]
    assert file_bytes(multi["index"], boundary - 5, boundary + 7) == want

    # The last byte of the last shard.
    last = index["shards"][-1]
    header_end, header = layout(last["index"])
    final_name = max(header, key=lambda k: header[k]["data_offsets"][1])
    last_byte = _raw(expected[final_name]).numpy().tobytes()[-1:]
    assert file_bytes(last["index"], last["size"] - 1, last["size"]) == last_byte


def test_etag_is_stable_and_changes_with_options_and_model(service):
    model_id = _load(service, "mlm_gpt")
    first = _shard(service, model_id, 0)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong, usable with If-Range
    assert _shard(service, model_id, 0).headers["etag"] == etag
    assert _shard(service, model_id, 0, method="HEAD").headers["etag"] == etag
    assert _shard(service, model_id, 0, headers={"Range": "bytes=0-9"}).headers["etag"] == etag

    others = {
        "dtype": _shard(service, model_id, 0, {"dtype": "bf16"}).headers["etag"],
        "keys": _shard(service, model_id, 0, {"keys": "model.decoder."}).headers["etag"],
        "max_shard_bytes": _shard(service, model_id, 0, {"max_shard_bytes": 2 * MiB}).headers["etag"],
        "model": _shard(service, _load(service, "bridge_gpt_tied_rope_fp32"), 0).headers["etag"],
    }
    assert etag not in others.values() and len(set(others.values())) == len(others), others
    # Spellings of one dtype are one set of files.
    assert _shard(service, model_id, 0, {"dtype": "bfloat16"}).headers["etag"] == others["dtype"]

    # The same id loaded again is another copy of the model: another ETag, the same bytes.
    assert service.client.delete(f"/v1/models/{model_id}").status_code == 204
    assert _load(service, "mlm_gpt") == model_id
    again = _shard(service, model_id, 0)
    assert again.headers["etag"] != etag
    assert again.content == first.content


def test_conditional_requests(service):
    model_id = _load(service, "mlm_gpt")
    full = _shard(service, model_id, 0)
    etag, size = full.headers["etag"], len(full.content)

    for if_none_match in (etag, "*", f'"nope", {etag}', f"W/{etag}"):
        for method in ("GET", "HEAD"):
            r = _shard(service, model_id, 0, headers={"If-None-Match": if_none_match}, method=method)
            assert r.status_code == 304, (if_none_match, method)
            assert r.content == b"" and r.headers["etag"] == etag
    r = _shard(service, model_id, 0, headers={"If-None-Match": '"nope"'})
    assert r.status_code == 200 and r.content == full.content
    # an ETag of other options does not match these files
    r = _shard(service, model_id, 0, {"dtype": "fp16"}, headers={"If-None-Match": etag})
    assert r.status_code == 200 and len(r.content) < size

    r = _shard(service, model_id, 0, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert r.status_code == 206 and r.content == full.content[10:20]
    for stale in ('"0123456789abcdef"', f"W/{etag}", "Sat, 28 Nov 2026 12:00:00 GMT"):
        r = _shard(service, model_id, 0, headers={"Range": "bytes=10-19", "If-Range": stale})
        assert r.status_code == 200, stale
        assert r.content == full.content and "content-range" not in r.headers
    # a stale If-Range also waives an unsatisfiable range
    r = _shard(service, model_id, 0, headers={"Range": f"bytes={size}-", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == size


def test_head_gives_the_headers_of_get_without_a_body(service):
    model_id = _load(service, "bridge_gpt_tied_rope_fp32")
    index = _index(service, model_id)
    get = _shard(service, model_id, 0)
    head = _shard(service, model_id, 0, method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == index["shards"][0]["size"] == len(get.content)
    for name in ("etag", "accept-ranges", "content-type", "content-disposition"):
        assert head.headers[name] == get.headers[name], name
    assert index["shards"][0]["filename"] in head.headers["content-disposition"]
    ranged = _shard(service, model_id, 0, headers={"Range": "bytes=0-9"}, method="HEAD")
    assert ranged.status_code == 200 and ranged.headers["content-length"] == head.headers["content-length"]
    assert _shard(service, model_id, 1, method="HEAD").status_code == 404
    assert _shard(service, "no-such-model", 0, method="HEAD").status_code == 404


@pytest.mark.parametrize(
    ("name", "dtype", "target"),
    [("mlm_gpt", "bf16", torch.bfloat16), ("bridge_gpt_tied_rope_fp32", "fp16", torch.float16)],
)
def test_dtype_casts_on_the_fly(service, library, tmp_path, name, dtype, target):
    expected, _ = library[name]
    model_id = _load(service, name)
    params = {"dtype": dtype}
    index = _index(service, model_id, params)
    assert index["options"]["dtype"] == {torch.bfloat16: "BF16", torch.float16: "F16"}[target]
    assert index["total_size"] == sum(t.numel() * target.itemsize for t in expected.values())
    got = _download(service, model_id, index, params, tmp_path)
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert _same_bits(got[key], tensor.to(target)), key
    for key, tensor in got.items():
        assert index["checksums"][key] == xxhash.xxh3_64_hexdigest(_raw(tensor).numpy().tobytes()), key
    # the resident model is untouched: a plain request still serves float32
    plain = _download(service, model_id, _index(service, model_id), (), tmp_path)
    assert all(t.dtype == torch.float32 for t in plain.values())


def test_keys_select_by_prefix_and_regex(service, library, tmp_path):
    expected, non_tensors = library["mlm_gpt"]
    model_id = _load(service, "mlm_gpt")
    whole_order = list(_index(service, model_id)["weight_map"])

    prefix = "model.decoder.layers.0."
    index = _index(service, model_id, {"keys": prefix})
    wanted = [k for k in whole_order if k.startswith(prefix)]
    assert wanted and len(wanted) < len(expected)
    assert list(index["weight_map"]) == wanted  # the model's order, filtered
    assert index["total_size"] == sum(_nbytes(expected[k]) for k in wanted)
    assert sorted(index["skipped"]) == sorted(k for k in non_tensors if k.startswith(prefix))
    got = _download(service, model_id, index, {"keys": prefix}, tmp_path)
    assert set(got) == set(wanted) and all(_same_bits(got[k], expected[k]) for k in wanted)

    params = [("keys", r"model\.decoder\.layers\.\d+\.mlp\."), ("keys", "model.embedding.")]
    index = _index(service, model_id, params)
    wanted = [k for k in whole_order if ".mlp." in k or k.startswith("model.embedding.")]
    assert {k for k in wanted if ".mlp." in k} and list(index["weight_map"]) == wanted
    assert index["options"]["keys"] == [value for _, value in params]
    got = _download(service, model_id, index, params, tmp_path)
    assert set(got) == set(wanted)

    for r in (
        service.client.get(f"/v1/models/{model_id}/state_dict", params={"keys": "no.such.prefix"}),
        _shard(service, model_id, 0, {"keys": "no.such.prefix"}),
        service.client.head(f"/v1/models/{model_id}/state_dict/0", params={"keys": "no.such.prefix"}),
    ):
        assert r.status_code == 404
        if r.request.method != "HEAD":
            body = _problem(r, 404, problems.KEYS_NOT_FOUND)
            assert body["field"] == "keys" and "no.such.prefix" in body["detail"]

    for bad in ("(", "model.[", "*"):
        for r in (
            service.client.get(f"/v1/models/{model_id}/state_dict", params={"keys": bad}),
            _shard(service, model_id, 0, {"keys": bad}),
        ):
            body = _problem(r, 400, problems.BAD_REQUEST)
            assert body["field"] == "keys" and bad in body["detail"]


def test_errors_are_typed_problems(service):
    model_id = _load(service, "mlm_gpt")
    shard_count = len(_index(service, model_id)["shards"])
    _problem(service.client.get("/v1/models/no-such-model/state_dict"), 404, problems.MODEL_NOT_FOUND)
    _problem(_shard(service, "no-such-model", 0), 404, problems.MODEL_NOT_FOUND)
    for n in (shard_count, -1, 10**12):
        body = _problem(_shard(service, model_id, n), 404, problems.SHARD_NOT_FOUND)
        assert str(shard_count) in body["detail"]
    _problem(_shard(service, model_id, "first"), 422, problems.VALIDATION)

    index_url = f"/v1/models/{model_id}/state_dict"
    for params in ({"dtype": "int9"}, {"dtype": "bf17"}):
        for r in (service.client.get(index_url, params=params), _shard(service, model_id, 0, params)):
            assert params["dtype"] in _problem(r, 422, problems.INVALID_DTYPE)["detail"]
    body = _problem(_shard(service, model_id, 0, {"max_shard_bytes": 5}), 422, problems.VALIDATION)
    assert body["field"] == "max_shard_bytes" and body["limit"] == MiB
    body = _problem(service.client.get(index_url, params={"max_shard_bytes": 1 << 40}), 422, problems.VALIDATION)
    assert body["field"] == "max_shard_bytes" and body["limit"] == 64 << 30
    _problem(_shard(service, model_id, 0, {"max_shard_bytes": "lots"}), 422, problems.VALIDATION)
    body = _problem(_shard(service, model_id, 0, [("keys", f"k{i}") for i in range(65)]), 422, problems.VALIDATION)
    assert body["field"] == "keys" and body["limit"] == 64

    assert service.client.get(f"/v1/models/{model_id}").json()["active_leases"] == 0


def test_streamed_bytes_are_counted(service):
    model_id = _load(service, "mlm_gpt")
    before = service.metric("megaload_stream_bytes_total")
    size = len(_shard(service, model_id, 0).content)
    assert service.metric("megaload_stream_bytes_total") - before == size
    _shard(service, model_id, 0, headers={"Range": "bytes=0-9"})
    _shard(service, model_id, 0, method="HEAD")
    assert service.metric("megaload_stream_bytes_total") - before == size + 10


def test_checksums_are_computed_once_per_model_and_options(service, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import megaload.shard_plans as shard_plans

    calls: list[dict] = []
    real = shard_plans.fill_checksums

    def counting(plan, tensors, **kwargs):
        calls.append(plan.options.to_dict())
        return real(plan, tensors, **kwargs)

    monkeypatch.setattr(shard_plans, "fill_checksums", counting)
    model_id = _load(service, GENERATED_NAME)
    params = {"max_shard_bytes": 3 * MiB, "keys": "model.decoder."}
    with ThreadPoolExecutor(4) as pool:
        url = f"/v1/models/{model_id}/state_dict"
        answers = list(pool.map(lambda _: service.client.get(url, params=params), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.content for a in answers}) == 1
    assert _index(service, model_id, params) == answers[0].json()
    assert len(calls) == 1
    # other options are another plan; the same options on a reloaded model are too
    _index(service, model_id, {**params, "dtype": "bf16"})
    assert len(calls) == 2
    assert service.client.delete(f"/v1/models/{model_id}").status_code == 204
    assert _load(service, GENERATED_NAME) == model_id
    assert _index(service, model_id, params) == answers[0].json()
    assert len(calls) == 3
