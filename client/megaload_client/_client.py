"""The synchronous client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import closing
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
from ._handles import JobHandle, ModelHandle, load_request, merge_shards, save_request, worker_count
from ._progress import progress_bar
from ._resume import BufferSink, ShardTransfer, TransferAborted
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

__all__ = ["Client"]

T = TypeVar("T")
R = TypeVar("R")
Keys = str | Sequence[str] | None


_Aborted = TransferAborted


class Client(BaseClient):
    """Blocking client of the megaload service; thread-safe, use as a context manager.

    ``Client("http://127.0.0.1:8000", token=None, timeout=60, max_retries=3)``. The token
    falls back to ``$MEGALOAD_TOKEN``. ``http_client`` lets you bring your own
    ``httpx.Client`` (proxies, TLS); the caller then closes it, and it also carries the
    shard bodies, which otherwise (plain http) are read by the standard library straight
    into their destination (:attr:`shard_transport`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, max_retries=max_retries, headers=headers)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=self.timeout)
        if http_client is None:
            self._direct = direct_transport_for(self.base_url, self.timeout)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- transport -----------------------------------------------------------------

    def _request(self, call: Call[T]) -> T:
        retries = 0
        while True:
            request = self._build_request(self._http, call)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self._delay_after_error(call, exc, retries)
            else:
                delay = self._delay_after_status(call, response, retries)
                if delay is None:
                    return self._result(call, response)
                response.close()
            time.sleep(delay)
            retries += 1

    def _receive(
        self, call: Call[None], transfer: ShardTransfer, abort: threading.Event | None = None
    ) -> Iterator[int]:
        """Receive one shard into ``transfer`` on the best transport; yields each piece's size."""
        if self._direct is not None:
            return receive_shard(self, self._direct, call, transfer, abort)
        return self._stream_shard(call, transfer, abort)

    def _stream_shard(
        self, call: Call[None], transfer: ShardTransfer, abort: threading.Event | None = None
    ) -> Iterator[int]:
        """Receive one shard into ``transfer`` through httpx, resuming after breaks."""
        retries = 0
        while not transfer.complete:
            if abort is not None and abort.is_set():
                raise _Aborted
            offset_before = transfer.offset
            request = self._shard_request(self._http, call, transfer)
            try:
                response = self._http.send(request, stream=True)
                try:
                    delay = self._delay_after_status(call, response, retries)
                    if delay is None:
                        if response.status_code >= 400:
                            response.read()
                            raise make_status_error(response)
                        transfer.begin(response.status_code, response.headers)
                        for chunk in response.iter_raw():
                            if abort is not None and abort.is_set():
                                raise _Aborted
                            transfer.write(chunk)
                            yield len(chunk)
                        if not transfer.complete:
                            raise IntegrityError(
                                f"{transfer.where}: the answer ended after {transfer.offset} of "
                                f"{transfer.expected_size} bytes"
                            )
                        break
                finally:
                    response.close()
            except httpx.TransportError as exc:
                retries = self._retries_after_break(retries, transfer, offset_before)
                delay = self._delay_after_error(call, exc, retries)
            time.sleep(delay)
            retries += 1
        transfer.finish()

    def _map(self, fn: Callable[[T, threading.Event], R], items: Sequence[T], max_workers: int) -> list[R]:
        """``fn`` over ``items`` on worker threads; the first failure stops the others."""
        if not items:
            return []
        abort = threading.Event()
        with ThreadPoolExecutor(max_workers=worker_count(max_workers, len(items))) as pool:
            futures = [pool.submit(fn, item, abort) for item in items]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # a failure, or an interrupt while waiting: stop the rest
                failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
                if failed or not all(f.done() for f in futures):
                    abort.set()
                    for future in futures:
                        future.cancel()
            if failed:
                raise failed[0].exception()
            return [future.result() for future in futures]

    # ---- service -------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: the process serves."""
        return self._request(routes.health())

    def ready(self) -> Readiness:
        """``GET /readyz``; a 503 is returned as ``status != "ready"``, not raised."""
        return self._request(routes.ready())

    def wait_ready(self, timeout: float | None = 60.0, poll_interval: float = 0.5) -> Readiness:
        """Poll ``/readyz`` until ready; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.ready()
            if state.status == "ready":
                return state
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"service at {self.base_url} not ready after {timeout}s: {state.detail}")
            time.sleep(poll_interval)

    def info(self) -> Info:
        return self._request(routes.info())

    # ---- checkpoints ---------------------------------------------------------------

    def checkpoint_config(self, path: str) -> CheckpointConfig:
        return self._request(routes.checkpoint_config(path))

    def checkpoint_tensors(self, path: str) -> CheckpointTensors:
        return self._request(routes.checkpoint_tensors(path))

    def checkpoint_tokenizer(self, path: str) -> TokenizerInfo:
        return self._request(routes.checkpoint_tokenizer(path))

    def tokenize(self, path: str, text: str, *, detokenize: bool = True) -> TokenizeResponse:
        return self._request(routes.tokenize(TokenizeRequest(path=path, text=text, detokenize=detokenize)))

    # ---- models --------------------------------------------------------------------

    def load(
        self,
        checkpoint_path: str,
        *,
        model_type: str | None = None,
        dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None,
        pin: bool = False,
        timeout: float | httpx.Timeout | None = DEFAULT_LOAD_TIMEOUT,
    ) -> ModelHandle:
        """Load a checkpoint (or find it resident) and wait; returns a handle on the model."""
        request = load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=True)
        answer = self._request(routes.load_model(request, timeout=timeout))
        if isinstance(answer, Job):  # the service chose to answer with a job after all
            job = JobHandle(self, answer)
            job.wait()
            return job.model()
        return ModelHandle(self, answer)

    def start_load(
        self,
        checkpoint_path: str,
        *,
        model_type: str | None = None,
        dtype: str | None = None,
        mp_overrides: Mapping[str, Any] | None = None,
        pin: bool = False,
    ) -> JobHandle:
        """Start a load without waiting (``wait=false``); ``job.wait()`` then ``job.model()``."""
        request = load_request(checkpoint_path, model_type, dtype, mp_overrides, pin, wait=False)
        answer = self._request(routes.load_model(request))
        if isinstance(answer, ModelInfo):  # already resident: a finished job in all but name
            return JobHandle.resident(self, answer)
        return JobHandle(self, answer)

    def list_models(self) -> ModelList:
        return self._request(routes.list_models())

    def get_model(self, model_id: str) -> ModelHandle:
        return ModelHandle(self, self._request(routes.get_model(model_id)))

    def unload(self, model_id: str) -> None:
        """Evict a model (the service waits for streams reading it to finish)."""
        self._request(routes.unload_model(model_id))

    def save(
        self,
        model_id: str,
        path: str,
        *,
        ckpt_format: str = "torch_dist",
        hf_tokenizer_path: str | None = None,
        overwrite: bool = False,
    ) -> JobHandle:
        """Start saving a resident model as a checkpoint; ``.wait()`` on the returned job."""
        request = save_request(path, ckpt_format, hf_tokenizer_path, overwrite)
        return JobHandle(self, self._request(routes.save_model(model_id, request)))

    # ---- jobs ----------------------------------------------------------------------

    def list_jobs(self) -> list[Job]:
        return self._request(routes.list_jobs()).jobs

    def get_job(self, job_id: str) -> JobHandle:
        return JobHandle(self, self._request(routes.get_job(job_id)))

    def cancel_job(self, job_id: str) -> None:
        """Cancel a queued job; :class:`JobNotCancellableError` once it runs."""
        self._request(routes.cancel_job(job_id))

    # ---- state dict ----------------------------------------------------------------

    def state_dict_index(
        self,
        model_id: str,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
    ) -> StateDictIndex:
        """The shard index for these options (the same options must be used for the shards)."""
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = self._request(routes.state_dict_index(model_id, params))
        check_index(index)
        return index

    def state_dict(
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
        """The model's state dict as CPU torch tensors, keyed as in the service's shards.

        ``names="hf"``: the Hugging Face model's tensors instead (HF names, q/k/v and gate/up
        split, no vocabulary padding), as ``save_pretrained`` would write them; ``dtype`` and
        ``keys`` then apply to those. :class:`UnmappableModelError` when no supported Hugging
        Face architecture expresses the model.

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
        require_torch()
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)
        if out is not None:
            destinations = Destinations(out, index, strict=strict)
            return self._fill(model_id, params, index, verifier, destinations, max_workers=max_workers, progress=progress)
        with progress_bar(progress, total=index_bytes(index), desc=f"state_dict {model_id}") as bar:

            def fetch(shard: ShardInfo, abort: threading.Event) -> dict[str, torch.Tensor]:
                sink = BufferSink(shard.size)
                transfer = ShardTransfer(
                    sink,
                    shard.size,
                    on_restart=lambda held: bar.update(-held),
                    where=f"shard {shard.index}",
                    checker=ShardChecker(shard, index, verifier),
                )
                call = self._shard_call(routes.shard_path(model_id, shard.index), params)
                with closing(self._receive(call, transfer, abort)) as pieces:
                    for size in pieces:
                        bar.update(size)
                sink.release()
                return tensors_from_shard(sink.buffer, shard, index, None)  # checked on arrival

            parts = self._map(fetch, index.shards, max_workers)
        return merge_shards(parts, index.weight_map)

    def _fill(
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
                destinations.check_header(self._shard_header(call, shard), shard, index)
        with progress_bar(progress, total=index_bytes(index), desc=f"state_dict {model_id}") as bar:

            def fetch(shard: ShardInfo, abort: threading.Event) -> None:
                sink = StreamSink(shard, index, None, destination=destinations)
                transfer = ShardTransfer(
                    sink,
                    shard.size,
                    on_restart=lambda held: bar.update(-held),
                    where=f"shard {shard.index}",
                    checker=ShardChecker(shard, index, verifier),
                )
                with closing(self._receive(calls[shard.index], transfer, abort)) as pieces:
                    for size in pieces:
                        bar.update(size)
                sink.close()

            self._map(fetch, index.shards, max_workers)
        return destinations.out

    def _shard_header(self, call: Call[None], shard: ShardInfo) -> SafetensorsHeader:
        """A shard's safetensors header, from a ``Range`` request read only that far."""
        need = header_probe(shard)
        while True:
            header = header_from_prefix(self._shard_prefix(call, need), shard)
            if not isinstance(header, int):
                return header
            need = header

    def _shard_prefix(self, call: Call[None], size: int) -> bytes:
        """The first ``size`` bytes of a shard (the stream is closed once they are in)."""
        retries = 0
        while True:
            request = self._build_request(self._http, call)
            request.headers.update(
                {"Accept": "application/octet-stream, application/problem+json",
                 "Accept-Encoding": "identity", "Range": f"bytes=0-{size - 1}"}
            )
            try:
                response = self._http.send(request, stream=True)
                try:
                    delay = self._delay_after_status(call, response, retries)
                    if delay is None:
                        if response.status_code >= 400:
                            response.read()
                            raise make_status_error(response)
                        data = bytearray()
                        for chunk in response.iter_raw():
                            data += chunk
                            if len(data) >= size:
                                break
                        return bytes(data[:size])
                finally:
                    response.close()
            except httpx.TransportError as exc:
                delay = self._delay_after_error(call, exc, retries)
            time.sleep(delay)
            retries += 1

    def iter_tensors(
        self,
        model_id: str,
        dtype: str | None = None,
        keys: Keys = None,
        max_shard_bytes: int | None = None,
        *,
        names: str = "megatron",
        verify: bool = True,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` one at a time, streaming shard after shard.

        Memory stays bounded by the largest tensor. The index is fetched now (errors raise
        here); the shards as you iterate. Stopping early closes the stream. ``names="hf"``
        yields the Hugging Face model's tensors (HF names), as for :meth:`state_dict`.
        """
        require_torch()
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
        verifier = TensorVerifier(index.checksums, index.checksum_algorithm, enabled=verify)

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for shard in index.shards:
                sink = StreamSink(shard, index, None)  # the checker verifies as bytes arrive
                transfer = ShardTransfer(
                    sink, shard.size, where=f"shard {shard.index}", checker=ShardChecker(shard, index, verifier)
                )
                call = self._shard_call(routes.shard_path(model_id, shard.index), params)
                with closing(self._receive(call, transfer)) as pieces:
                    for _ in pieces:
                        yield from sink.drain()
                sink.close()
                yield from sink.drain()

        return tensors()

    def download(
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
        """Write the state dict as sharded safetensors plus ``model.safetensors.index.json``.

        ``names="hf"`` writes the Hugging Face model the checkpoint corresponds to, ready for
        ``from_pretrained(directory)``: HF tensors and names in the shards, and the model's
        ``config.json``, ``generation_config.json`` and tokenizer files (``result.files``,
        from the service's Hub endpoint). Resumable: run it again after an interruption and finished shards are kept (after
        checking them), partial ones continue from their ``.incomplete`` file with ``Range``.
        See :mod:`megaload_client._download` for the on-disk protocol.
        """
        params = routes.state_dict_params(dtype, keys, max_shard_bytes, names)
        index = self.state_dict_index(model_id, dtype, keys, max_shard_bytes, names=names)
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
        lock = threading.Lock()
        with progress_bar(progress, total=result.total_bytes, desc=f"download {model_id}") as bar:

            def fetch(shard: ShardInfo, abort: threading.Event) -> None:
                files = ShardFiles(target, shard)
                if files.final_is_valid(index, verifier):
                    bar.update(shard.size)
                    with lock:
                        result.reused.append(shard.filename)
                    return
                path = routes.shard_path(model_id, shard.index)
                head = self._request(Call("HEAD", path, lambda r: r.headers, params=params))
                sink = files.open(head.get("etag"))
                checker = ShardChecker(shard, index, verifier)
                try:
                    sink.replay(checker.feed)  # what an earlier run left, hashed once more
                    if sink.size:
                        with lock:
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
                    with closing(self._receive(self._shard_call(path, params), transfer, abort)) as pieces:
                        for size in pieces:
                            bar.update(size)
                except IntegrityError:
                    files.discard(sink)  # never resume onto bytes known to be wrong
                    raise
                finally:
                    sink.close()
                files.commit(sink, index, verifier, checked=True)
                with lock:
                    result.downloaded_bytes += shard.size - (0 if transfer.restarts else start)

            self._map(fetch, index.shards, max_workers)
        result.index_file = write_index(target, index)
        if names == "hf":
            result.files = self._download_hub_files(model_id, target)
        return result

    def _download_hub_files(self, model_id: str, target: Path) -> list[Path]:
        """The files of the model's Hub repository besides its weights (config, tokenizer)."""
        info = self._request(routes.hub_model_info(model_id))
        commit = str(info.get("sha") or "main")
        return [
            write_file(target, name, self._request(routes.hub_file(model_id, commit, name)))
            for name in hub_extra_files(info)
        ]
