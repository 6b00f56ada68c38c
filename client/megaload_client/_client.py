"""The synchronous client: a facade over the shared exchanges and plans, performed blocking.

Every request goes through :func:`._exchange.request`, every shard body through
:func:`._exchange.shard_body` (on the direct transport where it applies), every state-dict
call through a plan of :mod:`._plans`; :class:`~._async_client.AsyncClient` is the same
facade, awaited.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _base_client as base
from . import _exchange as exchange
from . import _routes as routes
from . import types
from ._download import DownloadResult, hub_extra_files, write_file
from ._drivers import SyncDriver, map_threads
from ._handles import JobHandle, ModelHandle
from ._plans import AsStream, Plan
from ._resume import ShardTransfer
from ._routes import Call

if TYPE_CHECKING:
    import torch

__all__ = ["Client"]

T = TypeVar("T")
R = TypeVar("R")
Keys = str | Sequence[str] | None


class Client(base.BaseClient):
    """Blocking client of the megaload service; thread-safe, use as a context manager.

    ``Client("http://127.0.0.1:8000", token=None, timeout=60, max_retries=3)``. Without a
    URL, ``$MEGALOAD_URL``, else ``http://127.0.0.1:8000`` (as the command line). The token
    falls back to ``$MEGALOAD_TOKEN``. ``http_client`` lets you bring your own
    ``httpx.Client`` (proxies, TLS); the caller then closes it, and it also carries the
    shard bodies, which otherwise (plain http) are read by the standard library straight
    into their destination (:attr:`shard_transport`).
    """

    def __init__(
        self, base_url: str | None = None, *, token: str | None = None,
        timeout: float | httpx.Timeout | None = base.DEFAULT_TIMEOUT, max_retries: int = base.DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None, http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url, token=token, timeout=timeout, max_retries=max_retries, headers=headers, http_client=http_client
        )
        self._http = http_client if http_client is not None else httpx.Client(timeout=self.timeout)
        self._driver = SyncDriver(self, self._http)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- driving the exchanges -----------------------------------------------------

    def _run(self, steps: exchange.Exchange[T]) -> T:
        return self._driver.run(steps)

    def _request(self, call: Call[T]) -> T:
        return self._driver.run(exchange.request(self, call))

    def _receive(
        self, call: Call[None], transfer: ShardTransfer, abort: threading.Event | None = None
    ) -> Generator[int, None, None]:
        """Receive one shard into ``transfer`` on the best transport; yields each piece's size."""
        return (self._direct or self._driver).stream(exchange.shard_body(self, call, transfer, abort))

    def _map(self, fn: Callable[[T, threading.Event], R], items: Sequence[T], max_workers: int) -> list[R]:
        return map_threads(fn, items, max_workers)

    def _fetch(self, plan: Plan, shard: types.ShardInfo, abort: threading.Event | None = None) -> Any:
        job = plan.job(shard)
        if job is None:
            return None
        transfer = job.start(self._request(job.head) if job.head else None)
        with job.receiving(), closing(self._receive(job.call, transfer, abort)) as pieces:
            for n in pieces:
                job.progress(n)
        return job.finish()

    def _run_plan(self, plan: Plan, max_workers: int) -> Any:
        for shard in plan.header_checks:
            plan.check_header(shard, self._run(exchange.shard_header(self, plan.call(shard), shard)))
        with plan:
            return plan.result(self._map(lambda shard, abort: self._fetch(plan, shard, abort), plan.shards, max_workers))

    def _stream(self, plan: AsStream) -> Iterator[tuple[str, torch.Tensor]]:
        for shard in plan.shards:
            job = plan.job(shard)
            assert job is not None
            with closing(self._receive(job.call, job.start(None))) as pieces:
                for _ in pieces:
                    yield from job.drain()
            yield from job.finish()

    # ---- service -------------------------------------------------------------------

    def health(self) -> types.Health:
        """``GET /healthz``: the process serves."""
        return self._request(routes.health())

    def ready(self) -> types.Readiness:
        """``GET /readyz``; a 503 is returned as ``status != "ready"``, not raised."""
        return self._request(routes.ready())

    def wait_ready(self, timeout: float | None = 60.0, poll_interval: float = 0.5) -> types.Readiness:
        """Poll ``/readyz`` until ready, also while the service refuses connections or is not
        up yet; :class:`ReadyTimeoutError` (a ``TimeoutError``) once ``timeout`` seconds passed."""
        return self._run(exchange.wait_ready(self, timeout, poll_interval))

    def info(self) -> types.Info:
        return self._request(routes.info())

    # ---- checkpoints ---------------------------------------------------------------

    def checkpoint_config(self, path: str) -> types.CheckpointConfig:
        return self._request(routes.checkpoint_config(path))

    def checkpoint_tensors(self, path: str) -> types.CheckpointTensors:
        return self._request(routes.checkpoint_tensors(path))

    def checkpoint_tokenizer(self, path: str) -> types.TokenizerInfo:
        return self._request(routes.checkpoint_tokenizer(path))

    def tokenize(self, path: str, text: str, *, detokenize: bool = True) -> types.TokenizeResponse:
        return self._request(routes.tokenize(types.TokenizeRequest(path=path, text=text, detokenize=detokenize)))

    # ---- models --------------------------------------------------------------------

    def load(
        self, checkpoint_path: str, *, model_type: str | None = None, dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None, pin: bool = False,
        timeout: float | httpx.Timeout | None = base.DEFAULT_LOAD_TIMEOUT,
    ) -> ModelHandle:
        """Load a checkpoint (or find it resident) and wait; returns a handle on the model."""
        request = routes.load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=True)
        answer = self._request(routes.load_model(request, timeout=timeout))
        if isinstance(answer, types.Job):  # the service chose to answer with a job after all
            job = JobHandle(self, answer)
            job.wait()
            return job.model()
        return ModelHandle(self, answer)

    def start_load(
        self, checkpoint_path: str, *, model_type: str | None = None, dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None, pin: bool = False,
    ) -> JobHandle:
        """Start a load without waiting (``wait=false``); ``job.wait()`` then ``job.model()``."""
        request = routes.load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=False)
        answer = self._request(routes.load_model(request))
        if isinstance(answer, types.ModelInfo):  # already resident: a finished job in all but name
            return JobHandle.resident(self, answer)
        return JobHandle(self, answer)

    def list_models(self) -> types.ModelList:
        return self._request(routes.list_models())

    def get_model(self, model_id: str) -> ModelHandle:
        return ModelHandle(self, self._request(routes.get_model(model_id)))

    def unload(self, model_id: str) -> None:
        """Evict a model (the service waits for streams reading it to finish)."""
        self._request(routes.unload_model(model_id))

    def save(
        self, model_id: str, path: str, *, ckpt_format: str = "torch_dist", hf_tokenizer_path: str | None = None,
        overwrite: bool = False,
    ) -> JobHandle:
        """Start saving a resident model as a checkpoint; ``.wait()`` on the returned job."""
        request = routes.save_request(path, ckpt_format, hf_tokenizer_path, overwrite)
        return JobHandle(self, self._request(routes.save_model(model_id, request)))

    # ---- jobs ----------------------------------------------------------------------

    def list_jobs(self) -> list[types.Job]:
        return self._request(routes.list_jobs()).jobs

    def get_job(self, job_id: str) -> JobHandle:
        return JobHandle(self, self._request(routes.get_job(job_id)))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a queued job; :class:`JobNotCancellableError` once it runs."""
        self._request(routes.cancel_job(job_id))

    # ---- state dict ----------------------------------------------------------------

    def state_dict_index(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None,
    ) -> types.StateDictIndex:
        """The shard index for these options (the same options must be used for the shards).

        ``tp_rank``/``tp_size`` (both or neither): what tensor-parallel rank ``tp_rank`` of
        ``tp_size`` holds; column-parallel tensors split on dim 0, row-parallel ones on dim 1,
        vocabulary tensors on padded rows, others whole. Not with ``names="hf"``."""
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size)
        return self._request(routes.state_dict_index(query))

    def state_dict(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None,
        max_workers: int = base.DEFAULT_MAX_WORKERS, verify: bool = True, progress: bool = False,
        out: Mapping[str, torch.Tensor] | None = None, strict: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The model's state dict as CPU torch tensors, keyed as in the service's shards.

        ``names="hf"``: the Hugging Face model's tensors instead (HF names, q/k/v and gate/up
        split, no vocabulary padding), as ``save_pretrained`` would write them; ``dtype`` and
        ``keys`` then apply to those. :class:`UnmappableModelError` when no supported Hugging
        Face architecture expresses the model. ``tp_rank``/``tp_size``: one tensor-parallel
        rank's slices (see :meth:`state_dict_index`).

        Shards are fetched in parallel, each read straight into one buffer of its exact size;
        every tensor is a view of its shard's buffer (``torch.frombuffer``), so no byte is
        copied after it arrives. ``verify`` checks each tensor's xxh3_64 checksum as its
        bytes arrive.

        ``out`` (name -> contiguous CPU tensor) makes it fill tensors you already have and
        return ``out`` itself: each tensor's bytes are read straight into its memory. Every
        streamed key needs a tensor of the same dtype (after ``dtype``'s cast) and shape, and
        with ``strict`` every key of ``out`` must be streamed; a mismatch is a ``ValueError``
        raised before any tensor byte is requested (checked against the index's ``tensors``, or
        the shard headers fetched first from a server without them, see
        :mod:`megaload_client._destinations`). A failure midway leaves ``out`` partly filled.
        """
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size, tensors=True)
        index = self._request(routes.state_dict_index(query))
        return self._run_plan(self._state_dict_plan(index, query, verify, progress, out, strict), max_workers)

    def iter_tensors(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None, verify: bool = True,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, streaming shard after shard.

        Memory stays bounded by the largest tensor. The index is fetched now (errors raise
        here); the shards as you iterate. Stopping early closes the stream. ``names="hf"``
        and ``tp_rank``/``tp_size`` as for :meth:`state_dict`.
        """
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size, tensors=True)
        return self._stream(self._stream_plan(self._request(routes.state_dict_index(query)), query, verify))

    def download(
        self, model_id: str, directory: str | Path, dtype: str | None = None, keys: Keys = None,
        max_shard_bytes: int | None = None, *, names: str = "megatron", tp_rank: int | None = None,
        tp_size: int | None = None, max_workers: int = base.DEFAULT_MAX_WORKERS, verify: bool = True,
        progress: bool = False, allow_foreign_files: bool = False,
    ) -> DownloadResult:
        """Write the state dict as sharded safetensors plus ``model.safetensors.index.json``.

        ``names="hf"`` writes the Hugging Face model the checkpoint corresponds to, ready for
        ``from_pretrained(directory)``: HF tensors and names in the shards, and the model's
        ``config.json``, ``generation_config.json`` and tokenizer files (``result.files``,
        from the service's Hub endpoint). ``tp_rank``/``tp_size``: one tensor-parallel rank's
        slices. Resumable: run it again after an interruption and finished shards are kept
        (after checking them), partial ones continue from their ``.incomplete`` file with
        ``Range``. The directory then holds exactly the shards its index names: shard files
        an earlier download with other options left are removed; other ``*.safetensors``
        files are refused (:class:`ForeignFilesError`) unless ``allow_foreign_files``.
        See :mod:`megaload_client._download` for the on-disk protocol.
        """
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size)
        index = self._request(routes.state_dict_index(query))
        plan = self._download_plan(index, query, directory, verify, progress, allow_foreign_files)
        result: DownloadResult = self._run_plan(plan, max_workers)
        if names == "hf":  # the files of the model's Hub repository besides its weights
            info = self._request(routes.hub_model_info(model_id))
            commit = str(info.get("sha") or "main")
            calls = [(name, routes.hub_file(model_id, commit, name)) for name in hub_extra_files(info)]
            result.files = [write_file(plan.directory, name, self._request(call)) for name, call in calls]
        return result
