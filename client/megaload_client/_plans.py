"""What the state-dict calls do with each shard, free of network I/O; both clients drive them.

A plan is made from the index and the call's options; for each shard it makes a
:class:`ShardJob`: the shard's call, the transfer its bytes go through (which sink, which
checker), and what becomes of the shard once it is in. The clients only move bytes::

    with IntoBuffers(query, index, verifier, progress) as plan:  # or IntoTensors, AsStream, ToFiles
      for shard in plan.shards (in parallel, but for AsStream):
        job = plan.job(shard)                         # None: nothing to fetch (a kept file)
        transfer = job.start(HEAD answer's headers if job.head else None)
        with job.receiving():                         # a file with bad bytes is discarded
            receive job.call into transfer, job.progress(n) for each piece
        part = job.finish()
      return plan.result(parts)

``IntoBuffers``: ``state_dict()``, a buffer per shard and tensors viewing it.
``IntoTensors``: ``state_dict(out=...)``, bytes read into the caller's tensors.
``AsStream``: ``iter_tensors()``, shard after shard, tensors handed out as they complete.
``ToFiles``: ``download()``, shard files in a directory (file I/O here: the async client
runs ``job``, ``start`` and ``finish`` of this plan in a worker thread).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _routes as routes
from ._checksums import TensorVerifier
from ._destinations import Destinations
from ._download import INDEX_FILENAME, DownloadResult, ShardFiles, directory_set, write_index
from ._exceptions import IntegrityError
from ._progress import ProgressBar, progress_bar
from ._resume import BufferSink, FileSink, ShardTransfer, Sink
from ._routes import Call, StateDictQuery
from ._shards import ShardChecker, StreamSink, merge_shards, tensors_from_shard
from .types import ShardInfo, StateDictIndex

if TYPE_CHECKING:
    import torch

__all__ = ["ShardJob", "Plan", "IntoBuffers", "IntoTensors", "AsStream", "ToFiles"]


@dataclass
class ShardJob:
    """One shard of a plan: where its bytes go and what it becomes."""

    plan: Plan
    shard: ShardInfo
    sink: Sink | None  # None until ``start`` opens it (a file named after the HEAD's ETag)
    head: Call[Any] | None = None  # ask this first (its headers go to start)
    transfer: ShardTransfer | None = None

    @property
    def call(self) -> Call[None]:
        return self.plan.call(self.shard)

    def start(self, head: Mapping[str, str] | None) -> ShardTransfer:
        self.transfer = self.plan.transfer(self, head)
        return self.transfer

    def receiving(self) -> AbstractContextManager[None]:
        return self.plan.receiving(self)

    def progress(self, n: int) -> None:
        self.plan.bar.update(n)

    def finish(self) -> Any:
        return self.plan.finish(self)

    def drain(self) -> Iterator[tuple[str, torch.Tensor]]:
        assert isinstance(self.sink, StreamSink)
        return self.sink.drain()


class Plan:
    """What all plans share: the query, the index, the checks, the progress bar (shown
    while the plan is entered, when ``progress`` asks for it)."""

    label = "state_dict"
    header_checks: list[ShardInfo] = []  # shards whose header must be checked first (IntoTensors)

    def __init__(self, query: StateDictQuery, index: StateDictIndex, verifier: TensorVerifier, progress: bool = False):
        self.query = query
        self.index = index
        self.verifier = verifier
        self.progress = progress
        self.bar = ProgressBar()

    def __enter__(self) -> Plan:
        total = sum(shard.size for shard in self.index.shards)
        self.bar = progress_bar(self.progress, total=total, desc=f"{self.label} {self.query.model_id}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.bar = ProgressBar()

    @property
    def shards(self) -> Sequence[ShardInfo]:
        return self.index.shards

    def call(self, shard: ShardInfo) -> Call[None]:
        return routes.shard(self.query, shard.index)

    def check_header(self, shard: ShardInfo, header: Any) -> None:
        """One of ``header_checks``, fetched (:func:`~._exchange.shard_header`)."""

    def sink(self, shard: ShardInfo) -> Sink:
        raise NotImplementedError

    def job(self, shard: ShardInfo) -> ShardJob | None:
        return ShardJob(self, shard, self.sink(shard))

    def transfer(self, job: ShardJob, head: Mapping[str, str] | None) -> ShardTransfer:
        assert job.sink is not None
        return ShardTransfer(
            job.sink,
            job.shard.size,
            on_restart=lambda held: self.bar.update(-held),
            where=f"shard {job.shard.index}",
            checker=ShardChecker(job.shard, self.index, self.verifier),
        )

    def receiving(self, job: ShardJob) -> AbstractContextManager[None]:
        return nullcontext()

    def finish(self, job: ShardJob) -> Any:
        return None

    def result(self, parts: list[Any]) -> Any:
        return None


class IntoBuffers(Plan):
    """``state_dict()``: each shard in one buffer of its exact size, its tensors views of it."""

    def sink(self, shard: ShardInfo) -> Sink:
        return BufferSink(shard.size)

    def finish(self, job: ShardJob) -> dict[str, torch.Tensor]:
        assert isinstance(job.sink, BufferSink)
        job.sink.release()
        return tensors_from_shard(job.sink.buffer, job.shard, self.index, None)  # checked on arrival

    def result(self, parts: list[Any]) -> dict[str, torch.Tensor]:
        return merge_shards(parts, self.index.weight_map)


class IntoTensors(Plan):
    """``state_dict(out=...)``: every tensor's bytes read into the caller's tensor.

    ``header_checks`` lists the shards whose headers must be fetched first (all of them from
    a server whose index has no ``tensors``; see :mod:`._destinations`); ``check_header``
    checks one."""

    def __init__(self, query: StateDictQuery, index: StateDictIndex, verifier: TensorVerifier, progress: bool,
                 destinations: Destinations):
        super().__init__(query, index, verifier, progress)
        self.destinations = destinations
        self.header_checks = [] if destinations.check_index(index) else list(index.shards)

    def check_header(self, shard: ShardInfo, header: Any) -> None:
        self.destinations.check_header(header, shard, self.index)

    def sink(self, shard: ShardInfo) -> Sink:
        return StreamSink(shard, self.index, None, destination=self.destinations)

    def finish(self, job: ShardJob) -> None:
        assert isinstance(job.sink, StreamSink)
        job.sink.close()

    def result(self, parts: list[Any]) -> Any:
        return self.destinations.out


class AsStream(Plan):
    """``iter_tensors()``: one shard after the other, tensors handed out as they complete
    (``job.drain()`` after each piece, then what ``finish`` returns). A stream cannot
    restart a shard it has handed tensors out of (:class:`~._shards.StreamSink`)."""

    def sink(self, shard: ShardInfo) -> Sink:
        return StreamSink(shard, self.index, None)  # the checker verifies as bytes arrive

    def finish(self, job: ShardJob) -> Iterator[tuple[str, torch.Tensor]]:
        assert isinstance(job.sink, StreamSink)
        job.sink.close()
        return job.sink.drain()


class ToFiles(Plan):
    """``download()``: shard files beside their index in ``directory`` (see :mod:`._download`).

    A shard file found complete and valid is kept; a partial one is resumed (its bytes
    hashed once more first); the ETag from a ``HEAD`` names the partial file, so bytes of
    another version of a shard are never resumed onto. ``result`` writes the index and then
    removes the shard files a previous download left that this one does not name (see
    :func:`~._download.directory_set`)."""

    label = "download"

    def __init__(self, query: StateDictQuery, index: StateDictIndex, verifier: TensorVerifier, progress: bool,
                 directory: Path, *, allow_foreign_files: bool = False):
        super().__init__(query, index, verifier, progress)
        directory.mkdir(parents=True, exist_ok=True)
        self.stale = directory_set(directory, index, allow_foreign_files=allow_foreign_files)  # refuses early
        self.directory = directory
        self.downloaded: DownloadResult = DownloadResult(
            directory=directory,
            index_file=directory / INDEX_FILENAME,
            shard_files=[directory / s.filename for s in index.shards],
            total_bytes=sum(s.size for s in index.shards),
            checksums_verified=verifier.active,
            skipped=list(index.skipped),
        )
        self._lock = threading.Lock()
        self._files: dict[int, ShardFiles] = {}
        self._start: dict[int, int] = {}

    def job(self, shard: ShardInfo) -> ShardJob | None:
        files = ShardFiles(self.directory, shard)
        if files.final_is_valid(self.index, self.verifier):
            self.bar.update(shard.size)
            with self._lock:
                self.downloaded.reused.append(shard.filename)
            return None
        self._files[shard.index] = files
        head = routes.shard(self.query, shard.index, method="HEAD")
        return ShardJob(self, shard, sink=None, head=head)

    def transfer(self, job: ShardJob, head: Mapping[str, str] | None) -> ShardTransfer:
        etag = (head or {}).get("etag")
        sink = job.sink = self._files[job.shard.index].open(etag)
        checker = ShardChecker(job.shard, self.index, self.verifier)
        try:
            sink.replay(checker.feed)  # what an earlier run left, hashed once more
        except BaseException:
            sink.close()
            raise
        if sink.size:
            with self._lock:
                self.downloaded.resumed.append(job.shard.filename)
        self.bar.update(sink.size)
        self._start[job.shard.index] = sink.size
        return ShardTransfer(
            sink,
            job.shard.size,
            etag=etag,
            on_restart=lambda held: self.bar.update(-held),
            where=f"shard {job.shard.index} ({job.shard.filename})",
            checker=checker,
        )

    @contextmanager
    def receiving(self, job: ShardJob) -> Iterator[None]:
        assert isinstance(job.sink, FileSink)
        try:
            yield
        except IntegrityError:
            self._files[job.shard.index].discard(job.sink)  # never resume onto bytes known to be wrong
            raise
        finally:
            job.sink.close()

    def finish(self, job: ShardJob) -> None:
        assert isinstance(job.sink, FileSink) and job.transfer is not None
        self._files[job.shard.index].commit(job.sink, self.index, self.verifier, checked=True)
        start = 0 if job.transfer.restarts else self._start[job.shard.index]
        with self._lock:
            self.downloaded.downloaded_bytes += job.shard.size - start

    def result(self, parts: list[Any]) -> DownloadResult:
        self.downloaded.index_file = write_index(self.directory, self.index)
        for path in self.stale:
            path.unlink(missing_ok=True)
        return self.downloaded
