"""The asyncio client: :class:`~._client.Client`'s methods, awaited.

Requests, answers, retries and resumption are decided by the same shared code as the sync
client (:mod:`._base_client`, :mod:`._routes`, :mod:`._resume`); only waiting differs.
Shard bodies on plain http are read by the sync client's standard-library reader
(:mod:`._direct_transport`) in a worker thread per shard, so bytes never pass through the
event loop; checksums are computed as the bytes arrive, in that same thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _routes as routes
from ._base_client import (
    DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_WORKERS,
    DEFAULT_TIMEOUT,
    BaseClient,
    index_bytes,
)
from ._checksums import TensorVerifier
from ._destinations import Destinations, header_from_prefix, header_probe
from ._direct_transport import direct_transport_for, receive_shard
from ._download import INDEX_FILENAME, DownloadResult, ShardFiles, hub_extra_files, write_file, write_index
from ._exceptions import IntegrityError, make_status_error
from ._handles import AsyncJobHandle, AsyncModelHandle, load_request, merge_shards, save_request, worker_count
from ._progress import progress_bar
from ._resume import BufferSink, ShardTransfer
from ._routes import Call
from ._safetensors import SafetensorsHeader, require_torch
from ._shards import ShardChecker, StreamSink, check_index, tensors_from_shard
from .types import (
    CheckpointConfig,
    CheckpointTensors,
    Health,
    Info,
    Job,
    ModelInfo,
    ModelList,
    Readiness,
    ShardInfo,
    StateDictIndex,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)

if TYPE_CHECKING:
    import torch

__all__ = ["AsyncClient"]

T = TypeVar("T")
R = TypeVar("R")
Keys = str | Sequence[str] | None


class AsyncClient(BaseClient):
    """Asyncio client of the megaload service; ``async with AsyncClient(url) as client``.

    Same constructor as :class:`Client` (``http_client`` is an ``httpx.AsyncClient``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, max_retries=max_retries, headers=headers)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=self.timeout)
        if http_client is None:
            self._direct = direct_transport_for(self.base_url, self.timeout)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    # ---- transport -----------------------------------------------------------------

    async def _request(self, call: Call[T]) -> T:
        retries = 0
        while True:
            request = self._build_request(self._http, call)
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._delay_after_error(call, exc, retries)
            else:
                delay = self._delay_after_status(call, response, retries)
                if delay is None:
                    return self._result(call, response)
                await response.aclose()
            await asyncio.sleep(delay)
            retries += 1

    async def _receive_all(self, call: Call[None], transfer: ShardTransfer, progress: Callable[[int], None]) -> None:
        """Receive a whole shard into ``transfer``: on plain http in one worker thread."""
        if self._direct is None:
            async for size in self._stream_shard(call, transfer):
                progress(size)
            return
        abort = threading.Event()

        def run() -> None:
            for size in receive_shard(self, self._direct, call, transfer, abort):
                progress(size)

        try:
            await asyncio.to_thread(run)
        finally:  # cancelled: the thread stops at its next read
            abort.set()

    async def _receive(self, call: Call[None], transfer: ShardTransfer) -> AsyncIterator[int]:
        """Receive one shard piece by piece (each direct read in a worker thread)."""
        if self._direct is None:
            async for size in self._stream_shard(call, transfer):
                yield size
            return
        abort = threading.Event()
        pieces = receive_shard(self, self._direct, call, transfer, abort)
        in_thread = False
        try:
            while True:
                in_thread = True
                size = await asyncio.to_thread(next, pieces, None)
                in_thread = False
                if size is None:
                    return
                yield size
        finally:
            abort.set()
            if not in_thread:  # else the read under way sees the abort and closes it
                pieces.close()

    async def _stream_shard(self, call: Call[None], transfer: ShardTransfer) -> AsyncIterator[int]:
        """Receive one shard into ``transfer`` through httpx, resuming after breaks."""
        retries = 0
        while not transfer.complete:
            offset_before = transfer.offset
            request = self._shard_request(self._http, call, transfer)
            try:
                response = await self._http.send(request, stream=True)
                try:
                    delay = self._delay_after_status(call, response, retries)
                    if delay is None:
                        if response.status_code >= 400:
                            await response.aread()
                            raise make_status_error(response)
                        transfer.begin(response.status_code, response.headers)
                        async for chunk in response.aiter_raw():
                            transfer.write(chunk)
                            yield len(chunk)
                        if not transfer.complete:
                            raise IntegrityError(
                                f"{transfer.where}: the answer ended after {transfer.offset} of "
                                f"{transfer.expected_size} bytes"
                            )
                        break
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                retries = self._retries_after_break(retries, transfer, offset_before)
                delay = self._delay_after_error(call, exc, retries)
            await asyncio.sleep(delay)
            retries += 1
        transfer.finish()

    async def _map(self, fn: Callable[[T], Awaitable[R]], items: Sequence[T], max_workers: int) -> list[R]:
        """``fn`` over ``items``, at most ``max_workers`` at once; the first failure cancels the rest."""
        if not items:
            return []
        gate = asyncio.Semaphore(worker_count(max_workers, len(items)))

        async def gated(item: T) -> R:
            async with gate:
                return await fn(item)

        tasks = [asyncio.ensure_future(gated(item)) for item in items]
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:  # cancelled from outside
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return [task.result() for task in tasks]

    # ---- service -------------------------------------------------------------------

    async def health(self) -> Health:
        return await self._request(routes.health())

    async def ready(self) -> Readiness:
        return await self._request(routes.ready())

    async def wait_ready(self, timeout: float | None = 60.0, poll_interval: float = 0.5) -> Readiness:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            state = await self.ready()
            if state.status == "ready":
                return state
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"service at {self.base_url} not ready after {timeout}s: {state.detail}")
            await asyncio.sleep(poll_interval)

    async def info(self) -> Info:
        return await self._request(routes.info())

    # ---- checkpoints ---------------------------------------------------------------

    async def checkpoint_config(self, path: str) -> CheckpointConfig:
        return await self._request(routes.checkpoint_config(path))

    async def checkpoint_tensors(self, path: str) -> CheckpointTensors:
        return await self._request(routes.checkpoint_tensors(path))

    async def checkpoint_tokenizer(self, path: str) -> TokenizerInfo:
        return await self._request(routes.checkpoint_tokenizer(path))

    async def tokenize(self, path: str, text: str, *, detokenize: bool = True) -> TokenizeResponse:
        return await self._request(routes.tokenize(TokenizeRequest(path=path, text=text, detokenize=detokenize)))

    # ---- models --------------------------------------------------------------------

    async def load(
        self,
        checkpoint_path: str,
        *,
        model_type: str | None = None,
        dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None,
        pin: bool = False,
        timeout: float | httpx.Timeout | None = DEFAULT_LOAD_TIMEOUT,
    ) -> AsyncModelHandle:
        request = load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=True)
        answer = await self._request(routes.load_model(request, timeout=timeout))
        if isinstance(answer, Job):
            job = AsyncJobHandle(self, answer)
            await job.wait()
            return await job.model()
        return AsyncModelHandle(self, answer)

    async def start_load(
        self,
        checkpoint_path: str,
        *,
        model_type: str | None = None,
        dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None,
        pin: bool = False,
    ) -> AsyncJobHandle:
        request = load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=False)
        answer = await self._request(routes.load_model(request))
        if isinstance(answer, ModelInfo):
            return AsyncJobHandle.resident(self, answer)
        return AsyncJobHandle(self, answer)

    async def list_models(self) -> ModelList:
        return await self._request(routes.list_models())

    async def get_model(self, model_id: str) -> AsyncModelHandle:
        return AsyncModelHandle(self, await self._request(routes.get_model(model_id)))

    async def unload(self, model_id: str) -> None:
        await self._request(routes.unload_model(model_id))

    async def save(
        self,
        model_id: str,
        path: str,
        *,
        ckpt_format: str = "torch_dist",
        hf_tokenizer_path: str | None = None,
        overwrite: bool = False,
    ) -> AsyncJobHandle:
        request = save_request(path, ckpt_format, hf_tokenizer_path, overwrite)
        return AsyncJobHandle(self, await self._request(routes.save_model(model_id, request)))

    # ---- jobs ----------------------------------------------------------------------

    async def list_jobs(self) -> list[Job]:
        return (await self._request(routes.list_jobs())).jobs

    async def get_job(self, job_id: str) -> AsyncJobHandle:
        return AsyncJobHandle(self, await self._request(routes.get_job(job_id)))

    async def cancel_job(self, job_id: str) -> None:
        await self._request(routes.cancel_job(job_id))

    # ---- state dict ----------------------------------------------------------------

    async def state_dict_index(
        self,
        model_id: str,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
    ) -> StateDictIndex:
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = await self._request(routes.state_dict_index(model_id, params))
        check_index(index)
        return index

    async def state_dict(
        self,
        model_id: str,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
        max_workers: int = DEFAULT_MAX_WORKERS,
        verify: bool = True,
        progress: bool = False,
        out: Mapping[str, torch.Tensor] | None = None,
        strict: bool = True,
    ) -> dict[str, torch.Tensor]:
        """As :meth:`Client.state_dict`, ``out=`` and ``strict`` included."""
        require_torch()
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = await self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)
        if out is not None:
            destinations = Destinations(out, index, strict=strict)
            return await self._fill(model_id, params, index, verifier, destinations, max_workers=max_workers, progress=progress)
        with progress_bar(progress, total=index_bytes(index), desc=f"state_dict {model_id}") as bar:

            async def fetch(shard: ShardInfo) -> dict[str, torch.Tensor]:
                sink = BufferSink(shard.size)
                transfer = ShardTransfer(
                    sink,
                    shard.size,
                    on_restart=lambda held: bar.update(-held),
                    where=f"shard {shard.index}",
                    checker=ShardChecker(shard, index, verifier),
                )
                call = self._shard_call(routes.shard_path(model_id, shard.index), params)
                await self._receive_all(call, transfer, bar.update)
                sink.release()
                return tensors_from_shard(sink.buffer, shard, index, None)  # checked on arrival

            parts = await self._map(fetch, index.shards, max_workers)
        return merge_shards(parts, index.weight_map)

    async def _fill(
        self,
        model_id: str,
        params: tuple[tuple[str, str], ...],
        index: StateDictIndex,
        verifier: TensorVerifier,
        destinations: Destinations,
        *,
        max_workers: int,
        progress: bool,
    ) -> Any:
        """``state_dict(out=...)``: check ``out`` against the index's ``tensors`` (or, from a
        server that does not send them, every shard's header), then read the bodies into it."""
        calls = [self._shard_call(routes.shard_path(model_id, shard.index), params) for shard in index.shards]
        if not destinations.check_index(index):
            for shard, call in zip(index.shards, calls):
                destinations.check_header(await self._shard_header(call, shard), shard, index)
        with progress_bar(progress, total=index_bytes(index), desc=f"state_dict {model_id}") as bar:

            async def fetch(shard: ShardInfo) -> None:
                sink = StreamSink(shard, index, None, destination=destinations)
                transfer = ShardTransfer(
                    sink,
                    shard.size,
                    on_restart=lambda held: bar.update(-held),
                    where=f"shard {shard.index}",
                    checker=ShardChecker(shard, index, verifier),
                )
                await self._receive_all(calls[shard.index], transfer, bar.update)
                sink.close()

            await self._map(fetch, index.shards, max_workers)
        return destinations.out

    async def _shard_header(self, call: Call[None], shard: ShardInfo) -> SafetensorsHeader:
        """A shard's safetensors header, from a ``Range`` request read only that far."""
        need = header_probe(shard)
        while True:
            header = header_from_prefix(await self._shard_prefix(call, need), shard)
            if not isinstance(header, int):
                return header
            need = header

    async def _shard_prefix(self, call: Call[None], size: int) -> bytes:
        """The first ``size`` bytes of a shard (the stream is closed once they are in)."""
        retries = 0
        while True:
            request = self._build_request(self._http, call)
            request.headers.update(
                {"Accept": "application/octet-stream, application/problem+json",
                 "Accept-Encoding": "identity", "Range": f"bytes=0-{size - 1}"}
            )
            try:
                response = await self._http.send(request, stream=True)
                try:
                    delay = self._delay_after_status(call, response, retries)
                    if delay is None:
                        if response.status_code >= 400:
                            await response.aread()
                            raise make_status_error(response)
                        data = bytearray()
                        async for chunk in response.aiter_raw():
                            data += chunk
                            if len(data) >= size:
                                break
                        return bytes(data[:size])
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                delay = self._delay_after_error(call, exc, retries)
            await asyncio.sleep(delay)
            retries += 1

    async def iter_tensors(
        self,
        model_id: str,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
        verify: bool = True,
    ) -> AsyncIterator[tuple[str, torch.Tensor]]:
        """``async for name, tensor in await client.iter_tensors(model_id)``: one at a time."""
        require_torch()
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = await self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)

        async def tensors() -> AsyncIterator[tuple[str, torch.Tensor]]:
            for shard in index.shards:
                sink = StreamSink(shard, index, None)  # the checker verifies as bytes arrive
                transfer = ShardTransfer(
                    sink, shard.size, where=f"shard {shard.index}", checker=ShardChecker(shard, index, verifier)
                )
                call = self._shard_call(routes.shard_path(model_id, shard.index), params)
                pieces = self._receive(call, transfer)
                try:
                    async for _ in pieces:
                        for item in sink.drain():
                            yield item
                finally:
                    await pieces.aclose()
                sink.close()
                for item in sink.drain():
                    yield item

        return tensors()

    async def download(
        self,
        model_id: str,
        directory: str | Path,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
        max_workers: int = DEFAULT_MAX_WORKERS,
        verify: bool = True,
        progress: bool = False,
    ) -> DownloadResult:
        """See :meth:`Client.download`. File writes are small and synchronous."""
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = await self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        result = DownloadResult(
            directory=target,
            index_file=target / INDEX_FILENAME,
            shard_files=[target / s.filename for s in index.shards],
            total_bytes=index_bytes(index),
            checksums_verified=verifier.active,
            skipped=list(index.skipped),
        )
        with progress_bar(progress, total=result.total_bytes, desc=f"download {model_id}") as bar:

            async def fetch(shard: ShardInfo) -> None:
                files = ShardFiles(target, shard)
                if await asyncio.to_thread(files.final_is_valid, index, verifier):
                    bar.update(shard.size)
                    result.reused.append(shard.filename)
                    return
                path = routes.shard_path(model_id, shard.index)
                head = await self._request(Call("HEAD", path, lambda r: r.headers, params=params))
                sink = files.open(head.get("etag"))
                checker = ShardChecker(shard, index, verifier)
                try:
                    await asyncio.to_thread(sink.replay, checker.feed)  # what an earlier run left
                    if sink.size:
                        result.resumed.append(shard.filename)
                    bar.update(sink.size)
                    start = sink.size
                    transfer = ShardTransfer(
                        sink,
                        shard.size,
                        etag=head.get("etag"),
                        on_restart=lambda held: bar.update(-held),
                        where=f"shard {shard.index} ({shard.filename})",
                        checker=checker,
                    )
                    await self._receive_all(self._shard_call(path, params), transfer, bar.update)
                except IntegrityError:
                    files.discard(sink)  # never resume onto bytes known to be wrong
                    raise
                finally:
                    sink.close()
                await asyncio.to_thread(files.commit, sink, index, verifier, checked=True)
                result.downloaded_bytes += shard.size - (0 if transfer.restarts else start)

            await self._map(fetch, index.shards, max_workers)
        result.index_file = write_index(target, index)
        if names == "hf":
            result.files = await self._download_hub_files(model_id, target)
        return result

    async def _download_hub_files(self, model_id: str, target: Path) -> list[Path]:
        """See :meth:`Client._download_hub_files`."""
        info = await self._request(routes.hub_model_info(model_id))
        commit = str(info.get("sha") or "main")
        written = []
        for name in hub_extra_files(info):
            data = await self._request(routes.hub_file(model_id, commit, name))
            written.append(await asyncio.to_thread(write_file, target, name, data))
        return written
