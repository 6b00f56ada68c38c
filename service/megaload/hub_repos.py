"""Resident models as Hugging Face Hub repositories: their files, commit, tree and model info.

The Hub endpoint (:mod:`megaload.api.routes.hub`) serves resident model ``<id>`` as the model
repository ``megaload/<id>`` with one branch, ``main``, at one commit. Its files are what
``save_pretrained`` writes for the Hugging Face model the checkpoint corresponds to::

    config.json, generation_config.json      from the HF view (megaload.hf)
    the tokenizer files the checkpoint ships  (megaload.checkpoint.tokenizer_files)
    model.safetensors.index.json              the HF index of the plan below
    model-0000k-of-0000n.safetensors          shards of the HF tensors: the same plan, bytes
                                              and ETags as GET /v1/models/{id}/state_dict?names=hf

The routes ask, always while holding a read lease on the entry::

    lease, repo = await repos.acquire(namespace, name)   # RepoNotFoundError, UnmappableModelError
    repo.check_revision(revision)                        # RevisionNotFoundError unless main or repo.sha
    repo.file(path)                                      # EntryNotFoundError (with the commit)
    repo.tree_page(path, start, limit)                   # the listing, a page at a time
    repo.info(files_metadata=...)                        # GET /api/models/{repo}/revision/{rev}

The commit ``sha`` (40 hex digits) hashes the model id, when it was loaded and every file's
path, size and ETag: it changes whenever a file could. A small file's ETag is the SHA-256 of
its bytes (as the Hub gives for large files, so ``huggingface_hub`` can check a local copy);
a shard's is the state-dict route's. Nothing here reads tensor data. A repository is made
once per model id and load and kept (its small files' bytes with it) while the model stays
resident.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .errors import EntryNotFoundError, ModelNotFoundError, RepoNotFoundError, RevisionNotFoundError
from .per_model import PerModel
from .shard_plans import ShardPlans, shard_identity
from .streaming import ShardOptions, ShardPlan, safetensors_dtype_name, shard_etag

if TYPE_CHECKING:
    from .hf_models import HFModel, HFModels
    from .registry import Lease, ModelEntry, Registry

__all__ = [
    "HubRepos",
    "HubRepo",
    "HubFile",
    "HUB_NAMESPACE",
    "DEFAULT_BRANCH",
    "INDEX_FILENAME",
    "HUB_SHARD_OPTIONS",
    "MAX_TREE_PAGE",
]

HUB_NAMESPACE = "megaload"
DEFAULT_BRANCH = "main"
INDEX_FILENAME = "model.safetensors.index.json"
CONFIG_FILENAME = "config.json"
GENERATION_CONFIG_FILENAME = "generation_config.json"
HUB_SHARD_OPTIONS = ShardOptions()
"""The Hub serves the HF tensors as stored, in shards of the default size."""
MAX_TREE_PAGE = 1000
"""Entries per page of a tree listing, as the Hub pages them (the next page is in ``Link``)."""
_COMMIT_FORMAT = "megaload-hub-commit/1"
_RESERVED = frozenset({CONFIG_FILENAME, GENERATION_CONFIG_FILENAME, INDEX_FILENAME})


@dataclass(frozen=True)
class HubFile:
    """One file of a repository: its bytes (``data``) or shard ``shard`` of the repo's plan."""

    path: str
    size: int
    etag: str  # quoted
    data: bytes | None = field(default=None, repr=False)
    shard: int | None = None

    @property
    def oid(self) -> str:
        """A 40-hex-digit blob id (what the Hub's tree calls ``oid``)."""
        return hashlib.sha1(self.etag.encode("ascii")).hexdigest()

    @property
    def media_type(self) -> str:
        if self.path.endswith(".json"):
            return "application/json"
        if self.path.endswith((".txt", ".jinja")):
            return "text/plain; charset=utf-8"
        return "application/octet-stream"


@dataclass(frozen=True)
class HubRepo:
    """The repository of one load of one resident model; see the module docstring."""

    repo_id: str
    sha: str
    last_modified: datetime
    files: Mapping[str, HubFile]
    plan: ShardPlan
    hf: HFModel

    def check_revision(self, revision: str) -> None:
        if revision not in (DEFAULT_BRANCH, self.sha):
            raise RevisionNotFoundError(
                f"{self.repo_id} has no revision {revision!r}: it has the branch {DEFAULT_BRANCH!r} at commit "
                f"{self.sha} (a commit changes when the model is loaded again)",
                repo_id=self.repo_id,
            )

    def file(self, path: str) -> HubFile:
        found = self.files.get(path)
        if found is None:
            raise EntryNotFoundError(
                f"{self.repo_id} has no file {path!r} at {self.sha}; its files: {', '.join(self.files)}",
                repo_id=self.repo_id,
                commit=self.sha,
                path=path,
            )
        return found

    def tree_page(self, path: str, start: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
        """Entries ``[start, start + limit)`` of the listing of folder ``path`` ("" for the
        root; the repository has no other folder) and where the next page starts (``None``
        after the last)."""
        if path.strip("/"):
            raise EntryNotFoundError(
                f"{self.repo_id} has no folder {path!r} at {self.sha}: all its files are at the top",
                repo_id=self.repo_id,
                commit=self.sha,
                path=path,
            )
        entries = [{"type": "file", "oid": f.oid, "size": f.size, "path": f.path} for f in self.files.values()]
        end = start + limit
        return entries[start:end], (end if end < len(entries) else None)

    def info(self, *, files_metadata: bool = False) -> dict[str, Any]:
        """The model info document (``huggingface_hub.ModelInfo``'s fields)."""
        config = self.hf.view.config_json
        siblings = []
        for f in self.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if files_metadata:
                sibling.update(size=f.size, blobId=f.oid)
            siblings.append(sibling)
        parameters: dict[str, int] = {}
        for entry in self.plan.tensors.values():
            name = safetensors_dtype_name(entry.dtype) or str(entry.dtype)
            parameters[name] = parameters.get(name, 0) + math.prod(entry.shape)
        stamp = self.last_modified.isoformat().replace("+00:00", "Z")
        model_type = config.get("model_type")
        return {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": HUB_NAMESPACE,
            "sha": self.sha,
            "lastModified": stamp,
            "createdAt": stamp,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["transformers", "safetensors", *([model_type] if model_type else []), "text-generation"],
            "config": {"architectures": config.get("architectures", []), "model_type": model_type},
            "transformersInfo": {
                "auto_model": "AutoModelForCausalLM",
                "pipeline_tag": "text-generation",
                "processor": "AutoTokenizer",
            },
            "siblings": siblings,
            "safetensors": {"parameters": parameters, "total": sum(parameters.values())},
            "usedStorage": sum(f.size for f in self.files.values()),
        }


def repo_id_of(model_id: str) -> str:
    return f"{HUB_NAMESPACE}/{model_id}"


class HubRepos:
    """See the module docstring. One per service; used from the event loop only."""

    def __init__(self, registry: Registry, hf_models: HFModels, plans: ShardPlans) -> None:
        self.registry = registry
        self.hf_models = hf_models
        self.plans = plans
        self._repos: PerModel[HubRepo] = PerModel(registry, self._make, name="hub-repo")

    async def acquire(self, namespace: str, name: str) -> tuple[Lease, HubRepo]:
        """A lease on the model of repository ``namespace/name`` and its repository. The
        caller releases the lease (or hands it to a streamed body)."""
        repo_id = f"{namespace}/{name}"
        if namespace != HUB_NAMESPACE:
            raise RepoNotFoundError(
                f"no repository {repo_id!r}: this endpoint serves resident models as {HUB_NAMESPACE}/<model id>",
                repo_id=repo_id,
            )
        try:
            lease = self.registry.acquire(name)
        except ModelNotFoundError:
            raise RepoNotFoundError(
                f"no repository {repo_id!r}: no resident model has id {name!r} (GET /v1/models lists them)",
                repo_id=repo_id,
            ) from None
        try:
            return lease, await self._repos.get(lease.entry)
        except BaseException:
            lease.release()
            raise

    async def _make(self, entry: ModelEntry) -> HubRepo:
        hf = await self.hf_models.get(entry)
        plan = await self.plans.plan(entry, HUB_SHARD_OPTIONS, None, hf.tensors)
        identity = shard_identity(entry, None, hf.tensors)
        tokenizer = await anyio.to_thread.run_sync(_read_files, dict(hf.tokenizer_files))
        return _assemble(repo_id_of(entry.id), entry, hf, plan, identity, tokenizer)


def _assemble(
    repo_id: str, entry: ModelEntry, hf: HFModel, plan: ShardPlan, identity: str, tokenizer: Mapping[str, bytes]
) -> HubRepo:
    files: dict[str, HubFile] = {}

    def add(path: str, data: bytes) -> None:
        files[path] = HubFile(path, len(data), f'"{hashlib.sha256(data).hexdigest()}"', data=data)

    add(CONFIG_FILENAME, _json_file(hf.view.config_json))
    add(GENERATION_CONFIG_FILENAME, _json_file(hf.view.generation_config_json))
    for name in sorted(tokenizer):
        if name not in _RESERVED and not name.endswith(".safetensors"):
            add(name, tokenizer[name])
    add(INDEX_FILENAME, _json_file(plan.hf_index()))
    for shard in plan.shards:
        files[shard.filename] = HubFile(shard.filename, shard.size, shard_etag(identity, plan, shard.index), shard=shard.index)
    digest = hashlib.sha1()
    for part in (_COMMIT_FORMAT, repo_id, identity, *(f"{f.path}\0{f.size}\0{f.etag}" for f in files.values())):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return HubRepo(repo_id=repo_id, sha=digest.hexdigest(), last_modified=entry.loaded_at, files=files, plan=plan, hf=hf)


def _json_file(document: Mapping[str, Any]) -> bytes:
    """JSON as transformers writes its files: indented by 2, keys sorted, a final newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _read_files(files: Mapping[str, Path]) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in files.items()}
