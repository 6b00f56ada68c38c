"""The asyncio client: :class:`~._client.Client`'s facade, awaited.

The same exchanges (:mod:`._exchange`) and plans (:mod:`._plans`) as the sync client, driven
by an :class:`~._drivers.AsyncDriver`. Shard bodies on plain http are read by the
standard-library driver (:mod:`._direct_transport`) in a worker thread per shard, so bytes
never pass through the event loop; checksums are computed as the bytes arrive, in that same
thread. A download's file work (checking kept files, replaying partial ones, renaming) runs
in worker threads too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _base_client as base
from . import _exchange as exchange
from . import _routes as routes
from . import types
from ._download import DownloadResult, hub_extra_files, write_file
from ._drivers import AsyncDriver, map_tasks
from ._handles import AsyncJobHandle, AsyncModelHandle
from ._plans import AsStream, Plan
from ._resume import ShardTransfer
from ._routes import Call, StateDictQuery

if TYPE_CHECKING:
    import torch

__all__ = ["AsyncClient", "TensorStream"]

T = TypeVar("T")
R = TypeVar("R")
Keys = str | Sequence[str] | None


class AsyncClient(base.BaseClient):
    """Asyncio client of the megaload service; ``async with AsyncClient(url) as client``.

    Same constructor as :class:`Client` (``http_client`` is an ``httpx.AsyncClient``).
    """

    def __init__(
        self, base_url: str | None = None, *, token: str | None = None,
        timeout: float | httpx.Timeout | None = base.DEFAULT_TIMEOUT, max_retries: int = base.DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None, http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url, token=token, timeout=timeout, max_retries=max_retries, headers=headers, http_client=http_client
        )
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=self.timeout)
        self._driver = AsyncDriver(self, self._http)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    # ---- driving the exchanges -----------------------------------------------------

    async def _run(self, steps: exchange.Exchange[T]) -> T:
        return await self._driver.run(steps)

    async def _request(self, call: Call[T]) -> T:
        return await self._driver.run(exchange.request(self, call))

    async def _receive_all(self, call: Call[None], transfer: ShardTransfer, progress: Callable[[int], None]) -> None:
        """Receive a whole shard into ``transfer``: on plain http in one worker thread."""
        direct = self._direct
        if direct is None:
            async for size in self._driver.stream(exchange.shard_body(self, call, transfer)):
                progress(size)
            return
        abort = threading.Event()

        def run() -> None:
            for size in direct.stream(exchange.shard_body(self, call, transfer, abort)):
                progress(size)

        try:
            await asyncio.to_thread(run)
        finally:  # cancelled: the thread stops at its next read
            abort.set()

    async def _receive(self, call: Call[None], transfer: ShardTransfer) -> AsyncIterator[int]:
        """Receive one shard piece by piece (each direct read in a worker thread)."""
        if self._direct is None:
            async for size in self._driver.stream(exchange.shard_body(self, call, transfer)):
                yield size
            return
        abort = threading.Event()
        pieces = self._direct.stream(exchange.shard_body(self, call, transfer, abort))
        in_thread = False
        try:
            while True:
                in_thread = True
                piece = await asyncio.to_thread(_next_or_none, pieces)
                in_thread = False
                if piece is None:
                    return
                yield piece
        finally:
            abort.set()
            if not in_thread:  # else the read under way sees the abort and closes it
                pieces.close()

    async def _map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T], max_workers: int) -> list[R]:
        return await map_tasks(fn, items, max_workers)

    async def _fetch(self, plan: Plan, shard: types.ShardInfo) -> Any:
        job = await asyncio.to_thread(plan.job, shard)
        if job is None:
            return None
        head = await self._request(job.head) if job.head else None
        transfer = await asyncio.to_thread(job.start, head)
        with job.receiving():
            await self._receive_all(job.call, transfer, job.progress)
        return await asyncio.to_thread(job.finish)

    async def _run_plan(self, plan: Plan, max_workers: int) -> Any:
        for shard in plan.header_checks:
            plan.check_header(shard, await self._run(exchange.shard_header(self, plan.call(shard), shard)))
        with plan:
            parts = await self._map(lambda shard: self._fetch(plan, shard), plan.shards, max_workers)
            return plan.result(parts)

    async def _stream(self, plan: AsStream) -> AsyncIterator[tuple[str, torch.Tensor]]:
        for shard in plan.shards:
            job = plan.job(shard)
            assert job is not None
            pieces = self._receive(job.call, job.start(None))
            try:
                async for _ in pieces:
                    for item in job.drain():
                        yield item
            finally:
                await pieces.aclose()  # type: ignore[attr-defined]  # an async generator
            for item in job.finish():
                yield item

    # ---- service -------------------------------------------------------------------

    async def health(self) -> types.Health:
        return await self._request(routes.health())

    async def ready(self) -> types.Readiness:
        return await self._request(routes.ready())

    async def wait_ready(self, timeout: float | None = 60.0, poll_interval: float = 0.5) -> types.Readiness:
        """As :meth:`Client.wait_ready`: through refused connections, then :class:`ReadyTimeoutError`."""
        return await self._run(exchange.wait_ready(self, timeout, poll_interval))

    async def info(self) -> types.Info:
        return await self._request(routes.info())

    # ---- checkpoints ---------------------------------------------------------------

    async def checkpoint_config(self, path: str) -> types.CheckpointConfig:
        return await self._request(routes.checkpoint_config(path))

    async def checkpoint_tensors(self, path: str) -> types.CheckpointTensors:
        return await self._request(routes.checkpoint_tensors(path))

    async def checkpoint_tokenizer(self, path: str) -> types.TokenizerInfo:
        return await self._request(routes.checkpoint_tokenizer(path))

    async def tokenize(self, path: str, text: str, *, detokenize: bool = True) -> types.TokenizeResponse:
        return await self._request(routes.tokenize(types.TokenizeRequest(path=path, text=text, detokenize=detokenize)))

    # ---- models --------------------------------------------------------------------

    async def load(
        self, checkpoint_path: str, *, model_type: str | None = None, dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None, pin: bool = False,
        timeout: float | httpx.Timeout | None = base.DEFAULT_LOAD_TIMEOUT,
    ) -> AsyncModelHandle:
        request = routes.load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=True)
        answer = await self._request(routes.load_model(request, timeout=timeout))
        if isinstance(answer, types.Job):
            job = AsyncJobHandle(self, answer)
            await job.wait()
            return await job.model()
        return AsyncModelHandle(self, answer)

    async def start_load(
        self, checkpoint_path: str, *, model_type: str | None = None, dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None, pin: bool = False,
    ) -> AsyncJobHandle:
        request = routes.load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=False)
        answer = await self._request(routes.load_model(request))
        if isinstance(answer, types.ModelInfo):
            return AsyncJobHandle.resident(self, answer)
        return AsyncJobHandle(self, answer)

    async def list_models(self) -> types.ModelList:
        return await self._request(routes.list_models())

    async def get_model(self, model_id: str) -> AsyncModelHandle:
        return AsyncModelHandle(self, await self._request(routes.get_model(model_id)))

    async def unload(self, model_id: str) -> None:
        await self._request(routes.unload_model(model_id))

    async def save(
        self, model_id: str, path: str, *, ckpt_format: str = "torch_dist", hf_tokenizer_path: str | None = None,
        overwrite: bool = False,
    ) -> AsyncJobHandle:
        request = routes.save_request(path, ckpt_format, hf_tokenizer_path, overwrite)
        return AsyncJobHandle(self, await self._request(routes.save_model(model_id, request)))

    # ---- jobs ----------------------------------------------------------------------

    async def list_jobs(self) -> list[types.Job]:
        return (await self._request(routes.list_jobs())).jobs

    async def get_job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request(routes.get_job(job_id)))

    async def cancel_job(self, job_id: str) -> None:
        await self._request(routes.cancel_job(job_id))

    # ---- state dict ----------------------------------------------------------------

    async def state_dict_index(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None,
    ) -> types.StateDictIndex:
        """As :meth:`Client.state_dict_index`."""
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size)
        return await self._request(routes.state_dict_index(query))

    async def state_dict(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None,
        max_workers: int = base.DEFAULT_MAX_WORKERS, verify: bool = True, progress: bool = False,
        out: Mapping[str, torch.Tensor] | None = None, strict: bool = True,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`Client.state_dict`, ``out=`` and ``strict`` included."""
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size, tensors=True)
        index = await self._request(routes.state_dict_index(query))
        return await self._run_plan(self._state_dict_plan(index, query, verify, progress, out, strict), max_workers)

    def iter_tensors(
        self, model_id: str, dtype: str | None = None, keys: Keys = None, max_shard_bytes: int | None = None, *,
        names: str = "megatron", tp_rank: int | None = None, tp_size: int | None = None, verify: bool = True,
    ) -> TensorStream:
        """``async for name, tensor in client.iter_tensors(model_id)``: one at a time.

        ``await client.iter_tensors(...)`` fetches the index at once (errors raise there) and
        gives the same stream; otherwise the index is fetched on the first iteration."""
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size, tensors=True)
        return TensorStream(self, query, verify)

    async def download(
        self, model_id: str, directory: str | Path, dtype: str | None = None, keys: Keys = None,
        max_shard_bytes: int | None = None, *, names: str = "megatron", tp_rank: int | None = None,
        tp_size: int | None = None, max_workers: int = base.DEFAULT_MAX_WORKERS, verify: bool = True,
        progress: bool = False, allow_foreign_files: bool = False,
    ) -> DownloadResult:
        """See :meth:`Client.download`. File work runs in worker threads."""
        query = self._query(model_id, dtype, keys, max_shard_bytes, names, tp_rank, tp_size)
        index = await self._request(routes.state_dict_index(query))
        plan = await asyncio.to_thread(
            self._download_plan, index, query, directory, verify, progress, allow_foreign_files
        )
        result: DownloadResult = await self._run_plan(plan, max_workers)
        if names == "hf":  # see Client.download
            info = await self._request(routes.hub_model_info(model_id))
            commit = str(info.get("sha") or "main")
            for name in hub_extra_files(info):
                data = await self._request(routes.hub_file(model_id, commit, name))
                result.files.append(await asyncio.to_thread(write_file, plan.directory, name, data))
        return result


class TensorStream:
    """The tensors of :meth:`AsyncClient.iter_tensors`: an async iterator of ``(name,
    tensor)``, and awaitable (``await`` fetches the index now and gives the stream back).
    ``aclose()`` stops it early and closes the shard stream under way."""

    def __init__(self, client: AsyncClient, query: StateDictQuery, verify: bool) -> None:
        self._client = client
        self._query = query
        self._verify = verify
        self._tensors: AsyncIterator[tuple[str, torch.Tensor]] | None = None

    def __await__(self) -> Generator[Any, None, TensorStream]:
        return self._start().__await__()

    async def _start(self) -> TensorStream:
        if self._tensors is None:
            index = await self._client._request(routes.state_dict_index(self._query))
            self._tensors = self._client._stream(self._client._stream_plan(index, self._query, self._verify))
        return self

    def __aiter__(self) -> TensorStream:
        return self

    async def __anext__(self) -> tuple[str, torch.Tensor]:
        await self._start()
        assert self._tensors is not None
        return await self._tensors.__anext__()

    async def aclose(self) -> None:
        if self._tensors is not None:
            await self._tensors.aclose()  # type: ignore[attr-defined]  # an async generator


def _next_or_none(pieces: Generator[int, None, None]) -> int | None:
    return next(pieces, None)  # in a worker thread: StopIteration must not cross into the loop
