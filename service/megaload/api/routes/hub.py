"""The Hugging Face Hub endpoint: resident models as Hub model repositories, at ``/hf``.

The subset of the Hub's HTTP API that ``huggingface_hub`` uses to download a model
(``snapshot_download``, ``hf_hub_download``, ``HfApi.model_info``/``list_repo_tree``, and so
``transformers``' ``from_pretrained``, vLLM and SGLang through ``HF_ENDPOINT={base}/hf``)::

    GET  /hf/api/models/{repo}[/revision/{rev}]    model info: sha (the commit), siblings
    GET  /hf/api/models/{repo}/tree/{rev}[/{path}] the file list with sizes, paged (Link: next)
    HEAD /hf/{repo}/resolve/{rev}/{file}           ETag, X-Repo-Commit, Content-Length
    GET  /hf/{repo}/resolve/{rev}/{file}           the bytes; Range, If-Range, If-None-Match

``repo`` is ``megaload/<model id>``; ``rev`` is ``main`` or the commit the model info gives.
Misses answer 404 problems with the ``X-Error-Code`` huggingface_hub maps to its errors:
``RepoNotFound`` (no such resident model, or any other path here), ``RevisionNotFound``,
``EntryNotFound`` (a file or folder the repository does not have: optional files probed by
transformers land here). A model no Hugging Face architecture expresses answers 422
``unmappable-model`` naming the field. The bearer token applies as on ``/v1``. The files and
what they hold: :mod:`megaload.hub_repos`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from megaload_client import problems as p

from ...errors import BadRequestError, RepoNotFoundError
from ...hub_repos import MAX_TREE_PAGE, HubRepos
from ...runtime import Runtime
from ...streaming import iter_shard_bytes
from ..deps import RuntimeDep
from ..file_answers import add_get_and_head, file_answer
from ..problems import error_responses
from ..streaming_body import leased_stream

router = APIRouter(tags=["hugging face hub"])

Namespace = Annotated[str, Path(max_length=96, description="the repository's namespace: megaload")]
Name = Annotated[str, Path(max_length=128, description="the repository's name: a model id from POST /v1/models")]
Revision = Annotated[str, Path(max_length=256, description="main, or the commit sha the model info answers")]
Folder = Annotated[str, Path(max_length=1024, description="a folder of the repository (it has none but the top)")]
Filename = Annotated[str, Path(max_length=1024, description="a file of the repository, as the tree lists it")]


def get_hub_repos(runtime: RuntimeDep) -> HubRepos:
    return runtime.hub_repos


HubReposDep = Annotated[HubRepos, Depends(get_hub_repos)]

_REPO_ERRORS = (p.UNAUTHORIZED, p.REPO_NOT_FOUND, p.REVISION_NOT_FOUND, p.UNMAPPABLE_MODEL, p.VALIDATION)


async def _info(repos: HubRepos, namespace: str, name: str, revision: str, blobs: bool) -> JSONResponse:
    lease, repo = await repos.acquire(namespace, name)
    try:
        repo.check_revision(revision)
        return JSONResponse(repo.info(files_metadata=blobs))
    finally:
        lease.release()


BlobsQuery = Annotated[bool, Query(description="also list each file's size and blob id (files_metadata)")]


@router.get(
    "/api/models/{namespace}/{name}",
    summary="Model info of the main branch: the commit sha and the files (siblings)",
    responses=error_responses(*_REPO_ERRORS),
)
async def model_info(namespace: Namespace, name: Name, repos: HubReposDep, blobs: BlobsQuery = False) -> JSONResponse:
    return await _info(repos, namespace, name, "main", blobs)


@router.get(
    "/api/models/{namespace}/{name}/revision/{revision:path}",
    summary="Model info at a revision (main or the commit): the commit sha and the files (siblings)",
    responses=error_responses(*_REPO_ERRORS),
)
async def model_info_at(
    namespace: Namespace, name: Name, revision: Revision, repos: HubReposDep, blobs: BlobsQuery = False
) -> JSONResponse:
    return await _info(repos, namespace, name, revision, blobs)


async def _tree(
    request: Request, repos: HubRepos, namespace: str, name: str, revision: str, path: str, cursor: str | None,
    limit: int | None,
) -> JSONResponse:
    start = _cursor(cursor)
    lease, repo = await repos.acquire(namespace, name)
    try:
        repo.check_revision(revision)
        entries, following = repo.tree_page(path, start, limit or MAX_TREE_PAGE)
    finally:
        lease.release()
    headers = {}
    if following is not None:
        headers["Link"] = f'<{request.url.include_query_params(cursor=str(following))}>; rel="next"'
    return JSONResponse(entries, headers=headers)


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise BadRequestError(f"cursor {cursor[:40]!r} is not one this endpoint gave (the Link header's)", field="cursor")
    return int(cursor)


CursorQuery = Annotated[str | None, Query(max_length=64, description="where the page starts (from the Link header)")]
LimitQuery = Annotated[int | None, Query(ge=1, le=MAX_TREE_PAGE, description=f"entries per page (at most {MAX_TREE_PAGE})")]
RecursiveQuery = Annotated[bool, Query(description="list sub-folders too (the repository has none)")]
ExpandQuery = Annotated[bool, Query(description="accepted for compatibility; entries carry no commit details")]
_TREE_ERRORS = (*_REPO_ERRORS, p.ENTRY_NOT_FOUND, p.BAD_REQUEST)


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}",
    summary="The repository's files with sizes (paged: Link rel=next)",
    responses=error_responses(*_TREE_ERRORS),
)
async def tree(
    request: Request, namespace: Namespace, name: Name, revision: Revision, repos: HubReposDep,
    recursive: RecursiveQuery = False, expand: ExpandQuery = False, cursor: CursorQuery = None,
    limit: LimitQuery = None,
) -> JSONResponse:
    return await _tree(request, repos, namespace, name, revision, "", cursor, limit)


@router.get(
    "/api/models/{namespace}/{name}/tree/{revision}/{path:path}",
    summary="The files of a folder: every folder but the top is missing (404 EntryNotFound)",
    responses=error_responses(*_TREE_ERRORS),
)
async def tree_of_folder(
    request: Request, namespace: Namespace, name: Name, revision: Revision, path: Folder, repos: HubReposDep,
    recursive: RecursiveQuery = False, expand: ExpandQuery = False, cursor: CursorQuery = None,
    limit: LimitQuery = None,
) -> JSONResponse:
    return await _tree(request, repos, namespace, name, revision, path, cursor, limit)


async def _resolve(
    runtime: Runtime, repos: HubRepos, namespace: str, name: str, revision: str, filename: str, request: Request,
    *, head: bool,
) -> Response:
    lease, repo = await repos.acquire(namespace, name)
    handed_over = False
    try:
        repo.check_revision(revision)
        found = repo.file(filename)
        answer = file_answer(request, etag=found.etag, size=found.size, head=head)
        headers = {**answer.headers, "X-Repo-Commit": repo.sha}
        if answer.not_modified:
            return Response(status_code=304, headers=headers)
        if not answer.has_body:
            return Response(status_code=200, headers=headers, media_type=found.media_type)
        if found.data is not None:
            body = found.data[answer.start : answer.end]
            return Response(body, status_code=answer.status, headers=headers, media_type=found.media_type)
        pieces = iter_shard_bytes(repo.plan, found.shard, repo.hf.tensors, start=answer.start, end=answer.end)
        response = leased_stream(
            runtime,
            pieces,
            lease,
            status_code=answer.status,
            headers=headers,
            media_type=found.media_type,
            count_stalls=False,
        )
        handed_over = True
        return response
    finally:
        if not handed_over:
            lease.release()


_RESOLVE_RESPONSES = {
    200: {"description": "the whole file", "content": {"application/octet-stream": {}}},
    206: {"description": "the byte range asked for (Content-Range)", "content": {"application/octet-stream": {}}},
    304: {"description": "If-None-Match matched the file's ETag"},
    **error_responses(*_REPO_ERRORS, p.ENTRY_NOT_FOUND, p.RANGE_NOT_SATISFIABLE),
}


async def _resolve_endpoint(
    namespace: Namespace, name: Name, revision: Revision, filename: Filename, request: Request, runtime: RuntimeDep,
    repos: HubReposDep,
) -> Response:
    # GET: the file; HEAD: its headers. No docstring: it would become both operations'
    # description in the OpenAPI document.
    return await _resolve(runtime, repos, namespace, name, revision, filename, request, head=request.method == "HEAD")


add_get_and_head(
    router,
    "/{namespace}/{name}/resolve/{revision}/{filename:path}",
    _resolve_endpoint,
    names=("resolve", "resolve_head"),
    summaries=(
        "A file of the repository (ETag, X-Repo-Commit, Range, If-Range, If-None-Match)",
        "Headers of a file (ETag, X-Repo-Commit, Content-Length) without the body",
    ),
    responses=_RESOLVE_RESPONSES,
)


@router.api_route(
    "/{path:path}",
    methods=["GET", "HEAD"],
    include_in_schema=False,
)
async def anything_else(path: str) -> Response:
    """Any other path here: what the Hub answers for a repository it does not have."""
    raise RepoNotFoundError(
        f"no repository or route at {path!r}: this endpoint serves resident models as megaload/<model id> "
        f"(GET /v1/models lists them)",
        repo_id=path,
    )
