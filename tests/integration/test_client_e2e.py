"""The client SDK and CLI end to end against the real megaload service.

The module-scoped ``service`` fixture (tests/integration/conftest.py) runs the real app on a
real uvicorn server (127.0.0.1, port 0) with the real engine on gloo and copies of the real
fixture checkpoints; these tests talk to it only through ``megaload_client``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file
from upstream_fixtures import FIXTURE_NAMES as FIXTURES
from upstream_fixtures import FIXTURES_DIR

import megaload_client as mc


def _reference(name: str) -> dict[str, torch.Tensor]:
    """The upstream loader's state dict for a fixture (the library is checked against it too)."""
    return load_file(str(FIXTURES_DIR / name / "reference_state_dict.safetensors"))


@pytest.fixture
def client(service):
    with mc.Client(service.base_url, token=service.settings.token_value if service.settings.token else None) as c:
        yield c


def _cli(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "megaload_client", "--url", service.base_url, *args],
        capture_output=True, text=True, timeout=300,
    )


# ---------------------------------------------------------------------- service and checkpoints


def test_health_ready_and_info(client, service):
    assert client.health().status == "ok"
    assert client.wait_ready(timeout=30).status == "ready"
    info = client.info()
    assert info.ready and info.world_size == 1
    assert info.backend == "gloo"
    assert [Path(root).resolve() for root in info.checkpoint_roots] == [service.ckpt_root.resolve()]


def test_checkpoint_inspection_matches_the_reference(client):
    reference = _reference("mlm_gpt")
    config = client.checkpoint_config("mlm_gpt")
    assert config.format == "megatron_lm" and config.iteration == 10
    tensors = client.checkpoint_tensors("mlm_gpt")
    listed = {t.name: t for t in tensors.tensors}
    assert tensors.tensor_count == len(listed)
    # Names the checkpoint metadata and the model state dict share (layers are stacked in
    # the checkpoint, so only the unstacked ones compare directly).
    for name in ("embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"):
        assert listed[name].shape == list(reference[f"model.{name}"].shape), name
    tokenizer = client.checkpoint_tokenizer("mlm_gpt")
    expected = json.loads((FIXTURES_DIR / "mlm_gpt" / "reference_tokenizer.json").read_text())
    assert tokenizer.vocab_size == expected["vocab_size"] and tokenizer.eod == expected["eod"]
    ids = client.tokenize("mlm_gpt", expected["null_tokenizer_sentence"])
    assert ids.ids == expected["null_tokenizer_ids"] and ids.count == len(ids.ids)


def test_checkpoint_errors_are_typed(client, service, tmp_path):
    with pytest.raises(mc.CheckpointNotFoundError) as missing:
        client.checkpoint_config("no_such_checkpoint")
    assert isinstance(missing.value, FileNotFoundError) and "no_such_checkpoint" in str(missing.value)
    with pytest.raises(mc.PermissionDeniedError) as outside:
        client.checkpoint_config(str(tmp_path))
    assert isinstance(outside.value, PermissionError)
    with pytest.raises(mc.NotACheckpointError):
        client.load("saves")


# ---------------------------------------------------------------------- models and jobs


def test_load_list_get_and_unload_through_handles(client):
    model = client.load("mlm_gpt", dtype="bf16")
    assert model.info.dtype == "bfloat16"
    again = client.load("mlm_gpt", dtype="bfloat16")
    assert again.id == model.id  # a repeated load is idempotent
    assert model.id in [m.id for m in client.list_models().models]
    assert client.get_model(model.id).info.iteration == 10
    model.unload()
    with pytest.raises(mc.ModelNotFoundError) as gone:
        model.refresh()
    assert isinstance(gone.value, LookupError)


def test_start_load_returns_a_job_that_yields_the_model(client):
    job = client.start_load("bridge_gpt_tied_rope_fp32", pin=True)
    finished = job.wait(timeout=120, poll_interval=0.05)
    assert finished.state is mc.JobState.SUCCEEDED
    model = job.model()
    assert model.info.format == "megatron_bridge" and model.info.pinned


def test_save_job_waits_and_refuses_to_overwrite(client, service):
    model = client.load("mlm_gpt")
    job = model.save("e2e-save")
    done = job.wait(timeout=300, poll_interval=0.05)
    assert done.state is mc.JobState.SUCCEEDED
    assert (service.save_root / "e2e-save").is_dir()
    assert job.id in [j.id for j in client.list_jobs()]
    with pytest.raises((mc.CheckpointExistsError, mc.JobFailedError)) as refused:
        model.save("e2e-save").wait(timeout=300, poll_interval=0.05)
    if isinstance(refused.value, mc.JobFailedError):
        assert refused.value.job.error.status == 409
    else:
        assert isinstance(refused.value, FileExistsError)


def test_unknown_ids_are_typed_not_found(client):
    with pytest.raises(mc.ModelNotFoundError):
        client.get_model("0" * 16)
    with pytest.raises(mc.JobNotFoundError):
        client.get_job("no-such-job")


def test_invalid_load_options_are_refused_before_or_by_the_service(client):
    with pytest.raises(mc.InvalidDtypeError):
        client.load("mlm_gpt", dtype="float7")
    with pytest.raises(ValueError):  # refused by the request model, nothing sent
        client.load("mlm_gpt", mp_overrides={"tensor_model_parallel_size": 0})


# ---------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("name", FIXTURES)
def test_state_dict_equals_the_reference_bit_for_bit(client, name):
    model = client.load(name)
    tensors = model.state_dict(max_workers=3)
    reference = _reference(name)
    assert set(tensors) == set(reference)
    for key, want in reference.items():
        assert tensors[key].dtype == want.dtype and torch.equal(tensors[key], want), key


def test_iter_tensors_and_async_state_dict_match(client, service):
    model = client.load("mlm_gpt")
    reference = _reference("mlm_gpt")
    streamed = dict(model.iter_tensors())
    assert set(streamed) == set(reference)
    assert all(torch.equal(streamed[k], reference[k]) for k in reference)

    async def fetch():
        async with mc.AsyncClient(service.base_url) as aclient:
            return await aclient.state_dict(model.id)

    fetched = asyncio.run(fetch())
    assert all(torch.equal(fetched[k], reference[k]) for k in reference)


def test_bad_state_dict_options_are_typed_errors(client):
    model = client.load("mlm_gpt")
    with pytest.raises(ValueError, match="max_shard_bytes") as small:
        model.state_dict(max_shard_bytes=1024)
    assert isinstance(small.value, mc.APIStatusError) and small.value.status_code in (400, 422)
    with pytest.raises(mc.BadRequestError):
        model.state_dict(keys=["model.decoder.layers.(0"])
    with pytest.raises(mc.ModelNotFoundError):
        client.state_dict("0" * 16)


def test_dtype_cast_and_key_filter(client):
    model = client.load("mlm_gpt")
    reference = _reference("mlm_gpt")
    cast = model.state_dict(dtype="bf16")
    assert all(t.dtype == torch.bfloat16 for t in cast.values())
    assert all(torch.equal(cast[k], reference[k].to(torch.bfloat16)) for k in reference)
    layer0 = model.state_dict(keys=["model.decoder.layers.0."])
    assert layer0 and set(layer0) == {k for k in reference if k.startswith("model.decoder.layers.0.")}


def test_a_key_filter_matching_nothing_is_a_typed_error_naming_the_prefixes(client, service, tmp_path):
    model = client.load("mlm_gpt")
    calls = [
        lambda: model.state_dict(keys="nomatch"),
        lambda: model.index(keys="nomatch"),
        lambda: dict(model.iter_tensors(keys="nomatch")),
        lambda: model.download(tmp_path / "none", keys="nomatch"),
        lambda: model.state_dict(keys=["decoder.layers.0."]),  # the model's keys start with "model."
    ]
    for call in calls:
        with pytest.raises(mc.KeysNotFoundError) as info:
            call()
        error = info.value
        assert isinstance(error, LookupError) and error.status_code == 404
        assert error.problem.field == "keys"
        assert error.problem.key_prefixes == ["model.embedding", "model.decoder", "model.output_layer"]
        assert "model.embedding, model.decoder, model.output_layer" in error.detail
        assert "'nomatch'" in error.detail or "'decoder.layers.0.'" in error.detail
    with pytest.raises(mc.KeysNotFoundError) as hf:
        model.state_dict(keys="model.decoder.", names="hf")  # HF names: model.layers...
    assert "model.layers" in hf.value.problem.key_prefixes and "model.decoder" not in hf.value.problem.key_prefixes

    async def fetch():
        async with mc.AsyncClient(service.base_url) as aclient:
            return await aclient.state_dict(model.id, keys="nomatch")

    with pytest.raises(mc.KeysNotFoundError, match="'nomatch'"):
        asyncio.run(fetch())


def test_download_loads_with_safetensors_and_resumes(client, service, tmp_path):
    model = client.load("bridge_gpt_tied_rope_fp32")
    reference = _reference("bridge_gpt_tied_rope_fp32")
    options = {"dtype": "fp16"}  # fixtures fit one shard (the service cuts at 1 MiB or more)
    first = model.download(tmp_path / "full", **options)
    assert first.checksums_verified
    index = json.loads(first.index_file.read_text())
    loaded = {}
    for filename in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(str(tmp_path / "full" / filename)))
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k].to(torch.float16)) for k in reference)

    # An interrupted download: half of the last shard sits in its .incomplete file, written
    # with the real bytes the service serves, under the name the client derives from its ETag.
    target = tmp_path / "resumed"
    target.mkdir()
    shard_index = model.index(**options)
    last = shard_index.shards[-1]
    with mc.Client(service.base_url) as raw:
        query = mc._routes.state_dict_query(model.id, options["dtype"])
        head = raw._request(mc._routes.shard(query, last.index, method="HEAD"))
    from megaload_client._download import ShardFiles

    partial = ShardFiles(target, last).incomplete(head.get("etag"))
    partial.write_bytes((tmp_path / "full" / last.filename).read_bytes()[: last.size // 2])
    resumed = model.download(target, **options)
    assert resumed.resumed == [last.filename]
    for shard in shard_index.shards:
        assert (target / shard.filename).read_bytes() == (tmp_path / "full" / shard.filename).read_bytes()
    assert not list(target.glob("*.incomplete"))
    again = model.download(target, **options)
    assert sorted(again.reused) == sorted(s.filename for s in shard_index.shards)


# ---------------------------------------------------------------------- command line


def test_cli_against_the_service(service):
    loaded = _cli(service, "--json", "load", "mlm_gpt")
    assert loaded.returncode == 0, loaded.stderr
    model_id = json.loads(loaded.stdout)["id"]
    listing = _cli(service, "--json", "ls")
    assert model_id in [m["id"] for m in json.loads(listing.stdout)["models"]]
    shown = _cli(service, "show", model_id)
    assert shown.returncode == 0 and model_id in shown.stdout
    tokens = _cli(service, "--json", "tokenize", "mlm_gpt", "12 34 56 199")
    assert json.loads(tokens.stdout)["ids"] == [12, 34, 56, 199]
    info = _cli(service, "info")
    assert info.returncode == 0 and "gloo" in info.stdout

    missing = _cli(service, "show", "0" * 16)
    assert missing.returncode == 1
    assert "404 Model not found" in missing.stderr and "Traceback" not in missing.stderr
    outside = _cli(service, "load", "/")
    assert outside.returncode == 1 and "403" in outside.stderr and "Traceback" not in outside.stderr


# ---------------------------------------------------------------------- state_dict(out=...)


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and torch.equal(
        got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)
    )


def test_state_dict_out_fills_preallocated_tensors_bit_for_bit(client):
    model = client.load("mlm_gpt")
    fresh = model.state_dict()
    out = {key: torch.full_like(t, 3) if t.is_floating_point() else torch.zeros_like(t) for key, t in fresh.items()}
    pointers = {key: t.data_ptr() for key, t in out.items()}
    filled = model.state_dict(out=out, max_workers=3, max_shard_bytes=1 << 20)
    assert filled is out
    for key, want in fresh.items():
        assert out[key].data_ptr() == pointers[key], key
        assert _same_bits(out[key], want), key


def test_state_dict_out_with_a_server_side_cast_to_bf16(client, service):
    model = client.load("mlm_gpt")
    cast = model.state_dict(dtype="bf16")
    assert any(t.dtype == torch.bfloat16 for t in cast.values())
    out = {key: torch.empty_like(t) for key, t in cast.items()}
    model.state_dict(dtype="bf16", out=out)
    assert all(_same_bits(out[k], cast[k]) for k in cast)

    fp32 = {key: torch.empty(t.shape, dtype=torch.float32) if t.dtype == torch.bfloat16 else torch.empty_like(t)
            for key, t in cast.items()}
    with pytest.raises(ValueError, match=r"torch\.float32, the stream sends torch\.bfloat16"):
        model.state_dict(dtype="bf16", out=fp32)

    async def fetch():
        async with mc.AsyncClient(service.base_url, token=client._token) as aclient:
            again = {key: torch.zeros_like(t) for key, t in cast.items()}
            return again, await (await aclient.get_model(model.id)).state_dict(dtype="bf16", out=again)

    again, returned = asyncio.run(fetch())
    assert returned is again
    assert all(_same_bits(again[k], cast[k]) for k in cast)


def test_state_dict_out_refuses_bad_destinations_with_the_key(client):
    model = client.load("mlm_gpt")
    fresh = model.state_dict()
    key = next(k for k, t in fresh.items() if t.dim() == 2 and t.shape[0] != t.shape[1])
    wrong = {k: torch.zeros_like(t) for k, t in fresh.items()}
    wrong[key] = torch.zeros(tuple(reversed(fresh[key].shape)), dtype=fresh[key].dtype)
    with pytest.raises(ValueError, match=rf"{key}.*shape"):
        model.state_dict(out=wrong)
    assert not wrong[key].any()
    wrong[key] = torch.zeros(tuple(reversed(fresh[key].shape)), dtype=fresh[key].dtype).t()
    with pytest.raises(ValueError, match=rf"{key}.*not contiguous"):
        model.state_dict(out=wrong)
    del wrong[key]
    with pytest.raises(ValueError, match=key):
        model.state_dict(out=wrong)
    partial = model.state_dict(keys=[key], out={key: torch.zeros_like(fresh[key]), "other": torch.zeros(1)}, strict=False)
    assert _same_bits(partial[key], fresh[key]) and not partial["other"].any()


def _counting_client(seen: list[httpx.Request]) -> httpx.Client:
    """A caller's own httpx client that records every request it sends (the shard bodies go
    through it as well as the index, and header probes always do)."""
    return httpx.Client(event_hooks={"request": [seen.append]})


def test_state_dict_out_checks_the_index_tensors_without_header_requests(client, service):
    model = client.load("mlm_gpt")
    fresh = model.state_dict()
    index = client.state_dict_index(model.id, max_shard_bytes=1 << 20)
    assert sorted(index.tensors) == sorted(fresh)
    assert all(list(fresh[k].shape) == info.shape for k, info in index.tensors.items())
    seen: list[httpx.Request] = []
    token = service.settings.token_value if service.settings.token else None
    with _counting_client(seen) as http, mc.Client(service.base_url, token=token, http_client=http) as own:
        out = {key: torch.zeros_like(t) for key, t in fresh.items()}
        assert own.state_dict(model.id, out=out, max_shard_bytes=1 << 20) is out
        assert all(_same_bits(out[k], fresh[k]) for k in fresh)
        shard_requests = [r for r in seen if "/state_dict/" in r.url.path]
        assert len(shard_requests) == len(index.shards)
        assert all("range" not in r.headers for r in shard_requests)  # no header probes

        seen.clear()
        key = next(k for k, t in fresh.items() if t.dim() == 2 and t.shape[0] != t.shape[1])
        wrong = {k: torch.zeros_like(t) for k, t in fresh.items()}
        wrong[key] = torch.zeros(tuple(reversed(fresh[key].shape)), dtype=fresh[key].dtype)
        with pytest.raises(ValueError, match=rf"{key}.*shape"):
            own.state_dict(model.id, out=wrong)
        assert [r for r in seen if "/state_dict/" in r.url.path] == []  # refused before any shard request
        assert not any(t.any() for t in wrong.values())
