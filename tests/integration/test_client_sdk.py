"""SDK calls of issue 16 against the real service, over both clients: tensor-parallel slices
(``tp_rank``/``tp_size``), ``async for`` over an async model's tensors, and a download
directory that holds exactly one set of shards after downloads with other options.

The module-scoped ``service`` fixture (conftest) runs the real app with copies of the real
fixture checkpoints; ``make_client`` gives ``mc.Client`` or the real ``mc.AsyncClient``
behind blocking calls (:mod:`blocking_async`).
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import torch
from blocking_async import BlockingAsyncClient
from library_models import GENERATED_NAME, generate_gpt_checkpoint
from safetensors.torch import load_file

import megaload_client as mc

MiB = 1 << 20
TP_FIXTURE = "bridge_gpt_tied_rope_fp32"  # no GLU, vocabulary already padded to 256 rows: plain chunks


@pytest.fixture(params=["sync", "async"])
def make_client(request):
    return mc.Client if request.param == "sync" else BlockingAsyncClient


def _tp_dim(name: str) -> int | None:
    """The dim megatron splits ``name`` on across tensor-parallel ranks (None: whole on each)."""
    if re.search(r"(linear_qkv|linear_fc1)\.(weight|bias)$|(word_embeddings|output_layer)\.weight$", name):
        return 0
    if re.search(r"(linear_proj|linear_fc2)\.weight$", name):
        return 1
    return None


def _expected(full: torch.Tensor, name: str, rank: int, size: int) -> torch.Tensor:
    dim = _tp_dim(name)
    return full if dim is None else torch.chunk(full, size, dim)[rank]


def test_tp_slices_are_chunks_of_the_full_tensors(make_client, service, tmp_path):
    with make_client(service.base_url) as client:
        model = client.load(TP_FIXTURE)
        full = model.state_dict()
        assert any(_tp_dim(name) == 1 for name in full) and any(_tp_dim(name) == 0 for name in full)
        for rank in range(2):
            index = model.index(tp_rank=rank, tp_size=2)
            part = model.state_dict(tp_rank=rank, tp_size=2)
            assert sorted(part) == sorted(full)
            for name, tensor in full.items():
                want = _expected(tensor, name, rank, 2)
                assert torch.equal(part[name], want), (name, rank)
                assert index.tensors[name].shape == list(want.shape)
            streamed = dict(client.iter_tensors(model.id, tp_rank=rank, tp_size=2))
            assert all(torch.equal(streamed[name], part[name]) for name in part)
            result = model.download(tmp_path / f"rank{rank}", tp_rank=rank, tp_size=2)
            written = {}
            for path in result.shard_files:
                written.update(load_file(str(path)))
            assert all(torch.equal(written[name], part[name]) for name in part)
        with pytest.raises(ValueError, match="tp_rank and tp_size go together"):
            client.state_dict(model.id, tp_rank=0)  # refused before anything is sent
        with pytest.raises(ValueError, match="0 <= tp_rank < tp_size"):
            model.index(tp_rank=2, tp_size=2)


def test_async_model_tensors_are_a_plain_async_iterator(service):
    async def scenario():
        async with mc.AsyncClient(service.base_url) as client:
            model = await client.load(TP_FIXTURE)
            full = await model.state_dict()
            iterated = {name: tensor async for name, tensor in model.iter_tensors()}
            awaited = {name: tensor async for name, tensor in await model.iter_tensors()}  # as before
            sliced = {name: t async for name, t in client.iter_tensors(model.id, tp_rank=1, tp_size=2)}
            stream = model.iter_tensors(keys="model.embedding")
            first = await stream.__anext__()
            await stream.aclose()  # stopped early, the client stays usable
            return full, iterated, awaited, sliced, first, await model.index()

    full, iterated, awaited, sliced, first, index = asyncio.run(scenario())
    for got in (iterated, awaited):
        assert sorted(got) == sorted(full) and all(torch.equal(got[k], full[k]) for k in full)
    assert all(torch.equal(sliced[k], _expected(full[k], k, 1, 2)) for k in full)
    assert first[0] == "model.embedding.word_embeddings.weight" and index.total_size > 0


def _load_glob(directory) -> dict[str, torch.Tensor]:
    """What a loader that reads every ``*.safetensors`` of a directory gets (a key twice fails)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        part = load_file(str(path))
        assert not set(part) & set(tensors), f"{path.name} repeats tensors of another file"
        tensors.update(part)
    return tensors


def test_downloading_again_with_other_shards_leaves_one_set(make_client, service, tmp_path):
    generate_gpt_checkpoint(service.ckpt_root)  # about 90 MiB of fp32: several shards
    target = tmp_path / "out"
    with make_client(service.base_url) as client:
        model = client.load(GENERATED_NAME)
        want = model.state_dict(dtype="bf16")
        first = model.download(target, dtype="bf16", max_shard_bytes=8 * MiB)
        second = model.download(target, dtype="bf16", max_shard_bytes=20 * MiB)
    assert len(first.shard_files) > len(second.shard_files) >= 2
    names = {path.name for path in target.glob("*.safetensors")}
    assert names == set(json.loads(second.index_file.read_text())["weight_map"].values())
    assert names == {path.name for path in second.shard_files}
    got = _load_glob(target)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_foreign_safetensors_files_are_refused_unless_allowed(make_client, service, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    foreign = target / "adapter_model.safetensors"
    foreign.write_bytes(b"not ours")
    with make_client(service.base_url) as client:
        model = client.load(TP_FIXTURE)
        with pytest.raises(mc.ForeignFilesError, match="adapter_model.safetensors") as caught:
            model.download(target)
        assert caught.value.paths == [foreign] and isinstance(caught.value, FileExistsError)
        assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors"]  # nothing fetched
        result = model.download(target, allow_foreign_files=True)
    assert foreign.read_bytes() == b"not ours"  # never deleted
    assert {p.name for p in target.glob("*.safetensors")} == {foreign.name, *(p.name for p in result.shard_files)}
