"""The Hugging Face view over HTTP, driven by the real huggingface_hub, transformers and safetensors.

One real server (with a bearer token) serves the fixtures; ``huggingface_hub`` downloads from
its Hub endpoint at ``{base}/hf``, ``transformers`` loads from it through ``HF_ENDPOINT`` in a
fresh process, and what arrives is compared with the original Hugging Face model the
``hf_qwen2`` checkpoint was imported from (its ``hf/`` directory) and with megatron-core's
logits of the Megatron-LM fixture. A loopback relay (:mod:`cutting_proxy`) records what the
client asks and breaks a transfer midway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch
from conftest import FIXTURES_DIR, start_service
from cutting_proxy import CuttingProxy
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._pagination import paginate
from safetensors import safe_open
from safetensors.torch import load, load_file

TOKEN = "hub-test-token-0123456789abcdef"
QWEN2 = FIXTURES_DIR / "hf_qwen2"
MLM_LOGITS = [
    FIXTURES_DIR / "mlm_gpt" / "reference_mcore_logits.safetensors",
    Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "mlm_gpt" / "reference_mcore_logits.safetensors",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def hub(ckpt_root):
    with start_service(ckpt_root, token=TOKEN) as svc:
        yield svc


@pytest.fixture(scope="module")
def ids(hub) -> dict[str, str]:
    out = {}
    for name in ("hf_qwen2", "mlm_gpt", "bridge_gpt_tied_rope_fp32"):
        r = hub.load(name)
        assert r.status_code in (200, 201), r.text
        out[name] = r.json()["id"]
    return out


def endpoint(svc) -> str:
    return f"{svc.base_url}/hf"


def original_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(QWEN2 / "hf" / "model.safetensors"))


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert key not in out
                out[key] = f.get_tensor(key)
    return out


def assert_bit_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(sorted(got)) == list(sorted(want))
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        assert torch.equal(got[key].view(torch.uint8), tensor.view(torch.uint8)), key


# ---------------------------------------------------------------------------------------------
# snapshot_download


def test_snapshot_download_is_the_original_hf_model_bit_for_bit(hub, ids, tmp_path):
    model_id = ids["hf_qwen2"]
    directory = Path(snapshot_download(f"megaload/{model_id}", endpoint=endpoint(hub), local_dir=tmp_path, token=TOKEN))
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    bundled = QWEN2 / "checkpoint" / "iter_0000000" / "tokenizer"
    assert files == sorted(
        ["config.json", "generation_config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors"]
        + [p.name for p in bundled.iterdir()]
    )
    assert_bit_equal(tensors_of(directory), original_tensors())
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(original_tensors())
    assert set(index["weight_map"].values()) == {"model-00001-of-00001.safetensors"}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original_tensors().values())
    for path in bundled.iterdir():
        assert (directory / path.name).read_bytes() == path.read_bytes()
    config = json.loads((directory / "config.json").read_text())
    original = json.loads((QWEN2 / "hf" / "config.json").read_text())
    for key in ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings", "rope_theta", "rms_norm_eps"):
        assert config[key] == original[key], key


HF_FIXTURES = sorted(p.parent.parent.name for p in FIXTURES_DIR.glob("hf_*/hf/model.safetensors"))


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_every_hf_import_downloads_as_its_original_model(hub, name, tmp_path):
    """Each upstream AutoBridge import of a Hugging Face model (Llama 3, Mistral, Qwen2,
    Qwen3, Qwen3-MoE) comes back through the Hub endpoint as the model it was imported from:
    every tensor bit for bit, the architecture, and the tokenizer files it ships."""
    loaded = hub.load(name)
    if loaded.status_code == 422 and loaded.json().get("field", "").startswith("moe_"):
        pytest.skip(f"{name} does not load on this host: {loaded.json()['detail']}")
    assert loaded.status_code in (200, 201), loaded.text
    model_id = loaded.json()["id"]
    directory = Path(snapshot_download(f"megaload/{model_id}", endpoint=endpoint(hub), local_dir=tmp_path, token=TOKEN))
    original = FIXTURES_DIR / name / "hf"
    assert_bit_equal(tensors_of(directory), load_file(str(original / "model.safetensors")))
    config, want = (json.loads((d / "config.json").read_text()) for d in (directory, original))
    assert (config["architectures"], config["model_type"]) == (want["architectures"], want["model_type"])
    bundled = next((FIXTURES_DIR / name / "checkpoint").glob("iter_*")) / "tokenizer"
    for path in bundled.iterdir():
        assert (directory / path.name).read_bytes() == path.read_bytes()


def test_an_interrupted_file_download_resumes_with_a_range_request(hub, ids, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and
    # resumes from what it wrote; the fixture's shard is 0.2 MB, so read it in 8 KiB chunks.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    model_id = ids["hf_qwen2"]
    shard = "model-00001-of-00001.safetensors"
    size = len((QWEN2 / "hf" / "model.safetensors").read_bytes())
    with CuttingProxy(int(hub.base_url.rsplit(":", 1)[1])) as proxy:
        proxy.cut(shard, after_bytes=size // 2)  # the answer breaks half way
        directory = Path(
            snapshot_download(f"megaload/{model_id}", endpoint=f"{proxy.url}/hf", local_dir=tmp_path, token=TOKEN,
                              max_workers=1)
        )
        gets = proxy.seen("GET", shard)
    assert_bit_equal(tensors_of(directory), original_tensors())
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    resumed_at = int(gets[1].range.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at < size  # continued where the broken answer stopped, not from 0


def test_a_second_run_after_a_partial_snapshot_fetches_only_what_is_missing(hub, ids, tmp_path):
    model_id = ids["hf_qwen2"]
    with CuttingProxy(int(hub.base_url.rsplit(":", 1)[1])) as proxy:
        repo, where = f"megaload/{model_id}", f"{proxy.url}/hf"
        snapshot_download(repo, endpoint=where, local_dir=tmp_path, token=TOKEN, allow_patterns=["*.json"])
        first = {r.path.rsplit("/", 1)[1] for r in proxy.seen("GET", "/resolve/")}
        assert "config.json" in first and not any(name.endswith(".safetensors") for name in first)
        before = len(proxy.seen("GET", "/resolve/"))
        snapshot_download(repo, endpoint=where, local_dir=tmp_path, token=TOKEN)
        second = [r.path.rsplit("/", 1)[1] for r in proxy.seen("GET", "/resolve/")[before:]]
    assert second == ["model-00001-of-00001.safetensors"]
    assert_bit_equal(tensors_of(tmp_path), original_tensors())


# ---------------------------------------------------------------------------------------------
# The Hub API as huggingface_hub reads it


def test_model_info_revisions_and_tree(hub, ids, tmp_path):
    api = HfApi(endpoint=endpoint(hub), token=TOKEN)
    repo = f"megaload/{ids['hf_qwen2']}"
    info = api.model_info(repo)
    assert len(info.sha) == 40 and int(info.sha, 16) >= 0
    assert api.model_info(repo, revision=info.sha).sha == info.sha
    assert api.model_info(repo, revision="main").sha == info.sha
    names = {s.rfilename for s in info.siblings}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= names
    tree = list(api.list_repo_tree(repo, recursive=True, revision=info.sha))
    downloaded = Path(snapshot_download(repo, endpoint=endpoint(hub), local_dir=tmp_path, token=TOKEN))
    assert {f.path: f.size for f in tree} == {name: (downloaded / name).stat().st_size for name in names}
    detailed = api.model_info(repo, files_metadata=True)
    assert {s.rfilename: s.size for s in detailed.siblings} == {f.path: f.size for f in tree}
    assert detailed.safetensors.total == sum(t.numel() for t in original_tensors().values())


def test_misses_answer_the_error_codes_huggingface_hub_maps(hub, ids):
    api = HfApi(endpoint=endpoint(hub), token=TOKEN)
    repo = f"megaload/{ids['hf_qwen2']}"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("megaload/no-such-model")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("someone/else")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="v1.0")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "pytorch_model.bin", endpoint=endpoint(hub), token=TOKEN)
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="additional_chat_templates"))
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("gpt2", "config.json", endpoint=endpoint(hub), token=TOKEN)
    commit = api.model_info(repo).sha
    checks = [
        ("/hf/api/models/megaload/nope/revision/main", "RepoNotFound", "urn:megaload:problem:repo-not-found"),
        (f"/hf/api/models/{repo}/revision/v1.0", "RevisionNotFound", "urn:megaload:problem:revision-not-found"),
        (f"/hf/{repo}/resolve/main/nope.json", "EntryNotFound", "urn:megaload:problem:entry-not-found"),
        (f"/hf/api/models/{repo}/tree/main/additional_chat_templates", "EntryNotFound",
         "urn:megaload:problem:entry-not-found"),
    ]
    for path, code, type_ in checks:
        for method in ("GET", "HEAD"):
            if method == "HEAD" and "/resolve/" not in path:
                continue
            r = httpx.request(method, hub.base_url + path, headers=AUTH)
            assert r.status_code == 404, path
            assert r.headers["x-error-code"] == code, path
            assert r.headers["x-error-message"], path
            if code == "EntryNotFound":
                assert r.headers["x-repo-commit"] == commit
            if method == "GET":
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["type"] == type_


def test_tree_pages_follow_the_link_header(hub, ids):
    repo = f"megaload/{ids['hf_qwen2']}"
    url = f"{endpoint(hub)}/api/models/{repo}/tree/main"
    whole = httpx.get(url, params={"recursive": "true"}, headers=AUTH).json()
    assert len(whole) >= 5 and "link" not in httpx.get(url, headers=AUTH).headers
    first = httpx.get(url, params={"limit": 2}, headers=AUTH)
    assert len(first.json()) == 2 and 'rel="next"' in first.headers["link"]
    # huggingface_hub's own pagination follows the Link headers to the end.
    paged = list(paginate(url, params={"recursive": True, "limit": 2}, headers=AUTH))
    assert paged == whole
    bad = httpx.get(url, params={"cursor": "x"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["field"] == "cursor"


def test_resolve_headers_ranges_and_conditionals(hub, ids):
    model_id = ids["hf_qwen2"]
    commit = HfApi(endpoint=endpoint(hub), token=TOKEN).model_info(f"megaload/{model_id}").sha
    url = f"{endpoint(hub)}/megaload/{model_id}/resolve/{commit}/model-00001-of-00001.safetensors"
    head = httpx.head(url, headers=AUTH)
    assert head.status_code == 200 and head.headers["x-repo-commit"] == commit
    etag, size = head.headers["etag"], int(head.headers["content-length"])
    whole = httpx.get(url, headers=AUTH)
    assert whole.headers["etag"] == etag and len(whole.content) == size
    assert_bit_equal(load(whole.content), original_tensors())
    # The Hub's shard is the state-dict route's names=hf shard: same bytes, same ETag.
    v1 = httpx.get(f"{hub.base_url}/v1/models/{model_id}/state_dict/0", params={"names": "hf"}, headers=AUTH)
    assert v1.content == whole.content and v1.headers["etag"] == etag
    part = httpx.get(url, headers={**AUTH, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert httpx.get(url, headers={**AUTH, "If-None-Match": etag}).status_code == 304
    stale = httpx.get(url, headers={**AUTH, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == size
    assert httpx.get(url, headers={**AUTH, "Range": f"bytes={size}-"}).status_code == 416
    config = httpx.get(f"{endpoint(hub)}/megaload/{model_id}/resolve/main/config.json", headers={**AUTH, "Range": "bytes=0-0"})
    assert config.status_code == 206 and config.content == b"{"
    assert config.headers["etag"].strip('"') == __import__("hashlib").sha256(
        httpx.get(f"{endpoint(hub)}/megaload/{model_id}/resolve/main/config.json", headers=AUTH).content
    ).hexdigest()


# ---------------------------------------------------------------------------------------------
# names=hf on the state-dict routes


def test_names_hf_index_and_shards_equal_the_original(hub, ids):
    model_id = ids["hf_qwen2"]
    base = f"{hub.base_url}/v1/models/{model_id}/state_dict"
    index = httpx.get(base, params={"names": "hf"}, headers=AUTH).json()
    want = original_tensors()
    assert list(index["weight_map"]) == list(index["tensors"]) and set(index["weight_map"]) == set(want)
    got: dict[str, torch.Tensor] = {}
    for shard in index["shards"]:
        r = httpx.get(f"{base}/{shard['index']}", params={"names": "hf"}, headers=AUTH)
        assert len(r.content) == shard["size"]
        got.update(load(r.content))
    assert_bit_equal(got, want)
    import xxhash

    for name, tensor in got.items():
        assert xxhash.xxh3_64(tensor.view(torch.uint8).numpy().tobytes()).hexdigest() == index["checksums"][name]
    # dtype and keys apply to the HF tensors and names.
    query = {"names": "hf", "dtype": "float32", "keys": ["model.layers.1.self_attn.", "lm_head"]}
    index = httpx.get(base, params=query, headers=AUTH).json()
    subset = {k: v for k, v in want.items() if k.startswith("model.layers.1.self_attn.")}
    assert set(index["tensors"]) == set(subset)  # tied: no lm_head
    shard = load(httpx.get(f"{base}/0", params=query, headers=AUTH).content)
    assert_bit_equal(shard, {k: v.float() for k, v in subset.items()})
    both = httpx.get(base, params={"names": "hf", "tp_rank": 0, "tp_size": 2}, headers=AUTH)
    assert both.status_code == 400 and both.json()["field"] == "names"
    assert httpx.get(base, params={"names": "transformers"}, headers=AUTH).status_code == 422


def test_a_model_loaded_in_another_dtype_says_so_in_its_config(hub, ids, tmp_path):
    loaded = hub.load("hf_qwen2", dtype="float32")
    assert loaded.status_code in (200, 201), loaded.text
    model_id = loaded.json()["id"]
    assert model_id != ids["hf_qwen2"]
    directory = Path(snapshot_download(f"megaload/{model_id}", endpoint=endpoint(hub), local_dir=tmp_path, token=TOKEN))
    config = json.loads((directory / "config.json").read_text())
    assert config["torch_dtype"] == "float32"
    assert_bit_equal(tensors_of(directory), {k: v.float() for k, v in original_tensors().items()})
    assert hub.client.delete(f"/v1/models/{model_id}").status_code == 204


def test_unmappable_model_answers_422_naming_the_field(hub, ids):
    model_id = ids["bridge_gpt_tied_rope_fp32"]
    paths = [
        f"/v1/models/{model_id}/state_dict?names=hf",
        f"/v1/models/{model_id}/state_dict/0?names=hf",
        f"/hf/api/models/megaload/{model_id}",
        f"/hf/api/models/megaload/{model_id}/revision/main",
        f"/hf/api/models/megaload/{model_id}/tree/main",
        f"/hf/megaload/{model_id}/resolve/main/config.json",
    ]
    for path in paths:
        r = httpx.get(hub.base_url + path, headers=AUTH)
        assert r.status_code == 422, path
        problem = r.json()
        assert problem["type"] == "urn:megaload:problem:unmappable-model", path
        assert problem["field"] == "normalization" and "LayerNorm" in problem["detail"], path
    assert httpx.head(hub.base_url + paths[-1], headers=AUTH).status_code == 422
    with pytest.raises(HfHubHTTPError, match="LayerNorm"):
        HfApi(endpoint=endpoint(hub), token=TOKEN).model_info(f"megaload/{model_id}")
    # Megatron names still stream.
    assert httpx.get(f"{hub.base_url}/v1/models/{model_id}/state_dict", headers=AUTH).status_code == 200


def test_the_token_applies_to_the_hub(hub, ids, tmp_path):
    model_id = ids["hf_qwen2"]
    urls = [
        f"{endpoint(hub)}/api/models/megaload/{model_id}",
        f"{endpoint(hub)}/api/models/megaload/{model_id}/tree/main",
        f"{endpoint(hub)}/megaload/{model_id}/resolve/main/config.json",
        f"{endpoint(hub)}/megaload/no-such-model/resolve/main/config.json",
    ]
    for url in urls:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(url, headers=headers)
            assert r.status_code == 401, url
            assert r.json()["type"] == "urn:megaload:problem:unauthorized"
    with pytest.raises(HfHubHTTPError):
        snapshot_download(f"megaload/{model_id}", endpoint=endpoint(hub), local_dir=tmp_path / "no", token=False)
    assert not list((tmp_path).glob("no/*.json"))


# ---------------------------------------------------------------------------------------------
# transformers in a fresh process, through HF_ENDPOINT


def run_fresh(code: str, hub, tmp_path: Path, **env: str) -> dict:
    """Run ``code`` in a new interpreter that knows only HF_ENDPOINT and HF_TOKEN; it prints
    one JSON document last."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS"))}
    clean.update(
        HF_ENDPOINT=endpoint(hub), HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error", **env,
    )
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_from_pretrained_through_hf_endpoint_matches_the_original_model(hub, ids, tmp_path):
    out = run_fresh(
        f"""
        import json, torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        repo = "megaload/{ids['hf_qwen2']}"
        model = AutoModelForCausalLM.from_pretrained(repo)
        original = AutoModelForCausalLM.from_pretrained({str(QWEN2 / 'hf')!r})
        ref = load_file({str(QWEN2 / 'reference_hf_logits.safetensors')!r})
        with torch.no_grad():
            logits = model(ref["input_ids"]).logits.float()
            same = original(ref["input_ids"]).logits.float()
        tok = AutoTokenizer.from_pretrained(repo)
        tok_original = AutoTokenizer.from_pretrained({str(QWEN2 / 'hf')!r})
        text = "Hello world, this is a test."
        print(json.dumps({{
            "class": type(model).__name__, "dtype": str(model.dtype),
            "equal_to_original": torch.equal(logits, same),
            "max_diff_reference": (logits - ref["logits"].float()).abs().max().item(),
            "ids": tok(text).input_ids, "ids_original": tok_original(text).input_ids,
            "eos": tok.eos_token_id, "eos_original": tok_original.eos_token_id,
        }}))
        """,
        hub,
        tmp_path,
    )
    assert out["class"] == "Qwen2ForCausalLM" and out["dtype"] == "torch.bfloat16"
    assert out["equal_to_original"]
    assert out["max_diff_reference"] < 0.05  # transformers 4.57 wrote the reference, in bf16
    assert out["ids"] == out["ids_original"] and out["eos"] == out["eos_original"]


def test_from_pretrained_of_every_hf_import_computes_what_the_original_computes(hub, tmp_path):
    repos = {}
    for name in HF_FIXTURES:
        loaded = hub.load(name)
        if loaded.status_code in (200, 201):
            repos[name] = f"megaload/{loaded.json()['id']}"
    assert {"hf_qwen2", "hf_llama3"} <= set(repos)
    out = run_fresh(
        f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        repos, fixtures = {repos!r}, {str(FIXTURES_DIR)!r}
        ids = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 8, 110, 2, 7, 77]])
        report = {{}}
        for name, repo in repos.items():
            got = AutoModelForCausalLM.from_pretrained(repo)
            want = AutoModelForCausalLM.from_pretrained(f"{{fixtures}}/{{name}}/hf")
            with torch.no_grad():
                same = torch.equal(got(ids).logits, want(ids).logits)
            text = "Hello world, this is a test."
            tokens = AutoTokenizer.from_pretrained(repo)(text).input_ids
            tokens_want = AutoTokenizer.from_pretrained(f"{{fixtures}}/{{name}}/hf")(text).input_ids
            report[name] = {{"class": type(got).__name__, "want": type(want).__name__, "same": same,
                             "tokens": tokens == tokens_want}}
        print(json.dumps(report))
        """,
        hub,
        tmp_path,
    )
    for name, seen in out.items():
        assert seen["class"] == seen["want"] and seen["same"] and seen["tokens"], (name, seen)


def test_from_pretrained_of_a_megatron_lm_checkpoint_matches_megatron_core(hub, ids, tmp_path):
    reference = next((p for p in MLM_LOGITS if p.is_file()), None)
    if reference is None:
        pytest.skip("mlm_gpt/reference_mcore_logits.safetensors is not in tests/fixtures nor ../shared/fixtures")
    out = run_fresh(
        f"""
        import json, torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("megaload/{ids['mlm_gpt']}")
        ref = load_file({str(reference)!r})
        ids = torch.tensor([[1, 5, 17, 42, 99, 3, 64, 8, 110, 2, 7, 77]])
        want = next(v for k, v in ref.items() if v.dim() == 3)[..., : model.config.vocab_size]
        with torch.no_grad():
            logits = model(ids).logits
        print(json.dumps({{"class": type(model).__name__, "vocab": model.config.vocab_size,
                           "max_diff": (logits - want.reshape(logits.shape)).abs().max().item()}}))
        """,
        hub,
        tmp_path,
    )
    assert out["class"] == "LlamaForCausalLM" and out["vocab"] == 200
    assert out["max_diff"] < 1e-4


# ---------------------------------------------------------------------------------------------
# Last: reloading changes the commit (a module-scoped model is unloaded here).


def test_the_commit_is_stable_and_changes_when_the_model_is_loaded_again(hub, ids):
    api = HfApi(endpoint=endpoint(hub), token=TOKEN)
    repo = f"megaload/{ids['mlm_gpt']}"
    first = api.model_info(repo).sha
    assert api.model_info(repo).sha == first
    assert hub.client.delete(f"/v1/models/{ids['mlm_gpt']}").status_code == 204
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo)
    assert hub.load("mlm_gpt").json()["id"] == ids["mlm_gpt"]
    second = api.model_info(repo).sha
    assert second != first
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision=first)
