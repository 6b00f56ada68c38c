"""The issue-4 benchmarks in one run: streaming, memory and loads, each against a baseline
measured in the same run on the same machine. Run by hand:

    .venv/bin/python bench/bench_streaming.py [--data-dir /tmp/megaload-bench] [--repeats 5]
        [--load-repeats 200] [--json results.json] [--skip-load]

What runs, in order:

1. the checkpoint: a 1.1 GiB fp32 megatron-core GPT (``_gen_checkpoint.py``), generated once
   and cached under ``--data-dir``; its files are read into the page cache;
2. loads (``bench_load.py``): ``load_megatron_model(path, use_cpu_init=True)`` in a child
   process, then a fresh ``megaload serve`` child (``--memory-budget 8GiB``, CPU) and
   ``Client.load`` (cold), then ``--load-repeats`` resident ``Client.load`` calls;
3. the first ``Client.state_dict`` (the service plans the shards and computes checksums);
   one more with the server's RSS sampled every 2 ms by psutil;
4. ``--repeats`` rounds; each round runs every variant once, in this order, so a noisy
   neighbour hurts all of them alike:

   raw-mem     a child process holds a prefilled ``bytearray`` of N bytes (N = the sum of the
               shard files' sizes); the client connects over loopback, sends N as 8 bytes, and
               the server ``sendall``s the buffer; the client ``recv_into``s a ``bytearray(N)``
               allocated (hence zeroed and page-faulted) before the clock starts. One
               connection. The goal's baseline.
   raw-mem-fresh  the same, but ``bytearray(N)`` is allocated inside the timed region, as
               ``Client.state_dict`` allocates its shard buffers: the same zeroing and page
               faults of fresh memory. A second, equal-work baseline.
   ours-mem    ``Client.state_dict(model_id)`` with default options: index request, shards in
               parallel (the default 4 workers), each read into a fresh buffer of its size
               (an anonymous mapping asking for huge pages, faulted as the bytes land),
               checksums verified (xxhash present), tensors built as views of the buffers.
   naive-mem   a child uvicorn/Starlette app holding the same state dict (loaded with the
               library) answers each GET by ``torch.save`` of the whole dict into a BytesIO
               and one body; the client (httpx) reads the body and ``torch.load``s it
               (``weights_only=True``).
   raw-disk    the raw transfer, but the client ``recv_into``s a 4 MiB buffer and ``os.write``s
               each piece to a new file, then ``fsync``s and closes it.
   ours-mem-out  ``Client.state_dict(model_id, out=tensors)``: the same stream read straight
               into tensors of the right shapes and dtypes that were allocated and touched
               (filled) before the clock starts, as raw-mem's buffer is; checked against the
               index's ``tensors``, checksums verified.
   ours-disk   ``Client.download(model_id, fresh directory)``: each shard's body is hashed
               while it is written to its ``.incomplete`` file, fsync'd, its size on disk
               checked, renamed; the index written (fsync'd).
   naive-disk  the naive GET streamed (``iter_raw``) into a file, fsync'd (a ``.pt`` file on
               disk: what a naive download is).

   Diagnostics (where the time goes; no goal):
   ours-*-nv   ours with ``verify=False``.
   direct-mem  the service's shards fetched with the standard library (``http.client``,
               ``readinto`` straight into a prefaulted buffer per shard, one thread per
               shard): the service without the SDK's read path.
   httpx-mem   the service's shards fetched with bare httpx (``iter_raw`` copied into a
               prefaulted buffer per shard, one thread per shard): the HTTP client library's
               read path without the SDK's bookkeeping.
   fault       ``bytearray(N)`` alone: zeroing and page-faulting N bytes of fresh memory.

   Every ours run reads the service's ``VmHWM`` after resetting it (``clear_refs``) to get
   its peak RSS growth; CPU seconds (user+sys) of the client (this process) and of the
   serving process are recorded for every run, and so are the machine's direct-compaction
   stalls and huge-page faults (``/proc/vmstat``; the "stalls" column sums the rounds).
   The clock stops when the variant returns what it received; freeing it is not timed.

Throughput = N / wall time (N counts the shard files, headers included; naive bodies are
slightly larger: the pickle framing). Ratios use the median over the rounds. Goals: ours /
raw >= 0.7 (memory and disk), naive / ours time >= 3, server RSS growth < 64 MiB, resident
load < 10 ms.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import bench_load
import httpx
import psutil
import torch
from _gen_checkpoint import CHECKPOINT_NAME, DEFAULT_DATA_DIR, MODEL, checkpoint_bytes, ensure_checkpoint
from _service import PeakRss, Service, machine, proc_status_kib, report_goals, wait_http

from megaload_client import Client
from megaload_client import __version__ as client_version

MiB = 1 << 20
RAW_DISK_CHUNK = 4 * MiB

_RAW_SERVER = textwrap.dedent(
    """
    import socket, struct, sys
    size = int(sys.argv[1])
    data = memoryview(bytearray(b"\\x5a") * size)
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            want = b""
            while len(want) < 8:
                want += conn.recv(8 - len(want))
            (n,) = struct.unpack("<Q", want)
            conn.sendall(data[:n])
    """
)

_NAIVE_SERVER = textwrap.dedent(
    """
    import io, sys
    import torch, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from megaload.checkpoint import load_megatron_model, model_state_dict

    state = model_state_dict(load_megatron_model(sys.argv[1], use_cpu_init=True))

    def healthz(request):
        return Response(b"ok")

    def state_dict(request):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return Response(buffer.getvalue(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/healthz", healthz), Route("/state_dict", state_dict)])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    """
)


# ---- measurement helpers ------------------------------------------------------------------


class Cpu:
    """CPU seconds (user + system) used by this process and by ``pid`` over a block."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def __enter__(self) -> Cpu:
        self._client, self._server = _cpu(psutil.Process()), _cpu(self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = _cpu(psutil.Process()) - self._client
        self.server = _cpu(self.process) - self._server


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def timed(fn, server_pid: int, *, rss: bool = False) -> dict[str, float]:
    """Run ``fn``; its wall time, CPU seconds and (``rss``) the server's peak RSS growth."""
    gc.collect()
    peak = PeakRss(server_pid) if rss else None
    kernel = vmstat()
    with Cpu(server_pid) as cpu:
        if peak is not None:
            peak.__enter__()
        began = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - began
        if peak is not None:
            peak.__exit__()
    del result  # freeing what was received is not part of receiving it
    out = {"s": wall, "client_cpu_s": cpu.client, "server_cpu_s": cpu.server}
    out.update({f"{k}_delta": v - kernel[k] for k, v in vmstat().items() if k in kernel})
    if peak is not None:
        out["rss_growth"] = peak.hwm_growth
    return out


_VMSTAT = ("compact_stall", "thp_fault_alloc", "thp_fault_fallback")


def vmstat() -> dict[str, int]:
    """Machine-wide kernel counters that explain slow fresh memory: direct compaction stalls
    and huge pages handed out (or refused) on faults. Empty where there is no /proc/vmstat."""
    try:
        with open("/proc/vmstat") as f:
            pairs = (line.split() for line in f)
            return {k: int(v) for k, v in pairs if k in _VMSTAT}
    except OSError:
        return {}


# ---- baselines -------------------------------------------------------------------------------


class RawServer:
    def __init__(self, size: int) -> None:
        command = [sys.executable, "-c", _RAW_SERVER, str(size)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.port = int(self.process.stdout.readline())

    def close(self) -> None:
        self.process.kill()
        self.process.wait()

    def _connect(self, n: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(n.to_bytes(8, "little"))
        return sock

    def to_memory(self, buffer: bytearray) -> bytearray:
        n, view = len(buffer), memoryview(buffer)
        with self._connect(n) as sock:
            position = 0
            while position < n:
                got = sock.recv_into(view[position:])
                if not got:
                    raise RuntimeError(f"raw transfer ended after {position} of {n} bytes")
                position += got
        view.release()
        return buffer

    def to_disk(self, n: int, path: Path) -> None:
        chunk = bytearray(RAW_DISK_CHUNK)
        view = memoryview(chunk)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with self._connect(n) as sock:
                position = 0
                while position < n:
                    got = sock.recv_into(view, min(RAW_DISK_CHUNK, n - position))
                    if not got:
                        raise RuntimeError(f"raw transfer ended after {position} of {n} bytes")
                    written = 0
                    while written < got:
                        written += os.write(fd, view[written:got])
                    position += got
            os.fsync(fd)
        finally:
            os.close(fd)


class NaiveServer:
    def __init__(self, checkpoint: Path, log_path: Path) -> None:
        from _service import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _NAIVE_SERVER, str(checkpoint), str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_http(self.url + "/healthz", timeout=300, process=self.process)
        self.http = httpx.Client(timeout=None)

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def to_memory(self) -> dict[str, torch.Tensor]:
        body = self.http.get(self.url + "/state_dict").content
        self.body_bytes = len(body)
        return torch.load(io.BytesIO(body), weights_only=True)

    def to_disk(self, path: Path) -> None:
        with self.http.stream("GET", self.url + "/state_dict") as response, open(path, "wb") as f:
            for chunk in response.iter_raw():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())


# ---- the run -----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import importlib.metadata

    import megatron.core
    import starlette
    import uvicorn

    import megaload

    def installed(name: str) -> str:  # uvicorn's optional fast paths, used when present
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    return {
        "torch": torch.__version__,
        "megatron_core": megatron.core.__version__,
        "megaload": getattr(megaload, "__version__", "?"),
        "megaload_client": client_version,
        "httpx": httpx.__version__,
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "httptools": installed("httptools"),
        "uvloop": installed("uvloop"),
        "torch_threads": str(torch.get_num_threads()),
    }


def source_state() -> dict[str, object]:
    """The commit the service and client ran from, and which of their files differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "service", "client").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in changed]}


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def direct_fetch(port: int, path: str, buffer: bytearray) -> None:
    """GET ``path`` with the standard library, reading the body straight into ``buffer``."""
    view = memoryview(buffer)
    connection = http.client.HTTPConnection("127.0.0.1", port)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
        position = 0
        while position < len(buffer):
            got = response.readinto(view[position:])
            if not got:
                raise RuntimeError(f"GET {path} ended after {position} bytes")
            position += got
    finally:
        connection.close()
        view.release()


def httpx_fetch(http: httpx.Client, url: str, buffer: bytearray) -> None:
    """GET ``url`` with bare httpx, copying each chunk of the body into ``buffer``."""
    view = memoryview(buffer)
    try:
        with http.stream("GET", url) as response:
            position = 0
            for chunk in response.iter_raw():
                view[position : position + len(chunk)] = chunk
                position += len(chunk)
        if position != len(buffer):
            raise RuntimeError(f"GET {url} gave {position} of {len(buffer)} bytes")
    finally:
        view.release()


def parallel(fn, items: list) -> None:
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        for future in [pool.submit(fn, *item) for item in items]:
            future.result()


def rounds(args, service: Service, client: Client, model_id: str, shards: list, scratch: Path) -> dict[str, list[dict]]:
    n = sum(s.size for s in shards)
    raw = RawServer(n)
    naive = NaiveServer(service_checkpoint(args), args.data_dir / "naive.log")
    bare = httpx.Client(timeout=None)
    paths = [f"/v1/models/{model_id}/state_dict/{s.index}" for s in shards]
    runs: dict[str, list[dict]] = {}
    layout = {k: (t.shape, t.dtype) for k, t in client.state_dict(model_id).items()}  # for ours-mem-out
    try:
        for r in range(args.repeats):

            def record(name: str, fn, pid: int, *, rss: bool = False) -> None:
                result = timed(fn, pid, rss=rss)
                runs.setdefault(name, []).append(result)
                extra = f"  rss +{result['rss_growth'] / MiB:.1f} MiB" if result.get("rss_growth") is not None else ""
                rate = n / result["s"] / 1e9
                print(f"  round {r + 1} {name:<14}{result['s']:8.3f} s  {rate:6.2f} GB/s{extra}", flush=True)

            buffer = bytearray(n)
            record("raw-mem", lambda: raw.to_memory(buffer), raw.process.pid)
            del buffer
            record("raw-mem-fresh", lambda: raw.to_memory(bytearray(n)), raw.process.pid)
            record("ours-mem", lambda: client.state_dict(model_id), service.pid, rss=True)
            out = {k: torch.empty(shape, dtype=dtype).fill_(1) for k, (shape, dtype) in layout.items()}
            record("ours-mem-out", lambda: client.state_dict(model_id, out=out), service.pid, rss=True)
            del out
            record("naive-mem", naive.to_memory, naive.process.pid, rss=True)
            record("ours-mem-nv", lambda: client.state_dict(model_id, verify=False), service.pid, rss=True)
            buffers = [bytearray(s.size) for s in shards]
            jobs = list(zip(paths, buffers))
            record("direct-mem", lambda: parallel(partial(direct_fetch, service.port), jobs), service.pid)
            del jobs
            buffers = [bytearray(s.size) for s in shards]
            urls = [service.base_url + p for p in paths]
            record("httpx-mem", lambda: parallel(partial(httpx_fetch, bare), list(zip(urls, buffers))), service.pid)
            del buffers
            record("fault", lambda: bytearray(n), service.pid)
            target = scratch / "raw.bin"
            record("raw-disk", lambda: raw.to_disk(n, target), raw.process.pid)
            target.unlink()
            target = fresh_dir(scratch / "download")
            record("ours-disk", lambda: client.download(model_id, target), service.pid, rss=True)
            target = fresh_dir(scratch / "download")
            record("ours-disk-nv", lambda: client.download(model_id, target, verify=False), service.pid, rss=True)
            shutil.rmtree(target)
            target = scratch / "naive.pt"
            record("naive-disk", lambda: naive.to_disk(target), naive.process.pid)
            target.unlink()
        runs["_naive_body_bytes"] = [{"s": naive.body_bytes}]
    finally:
        bare.close()
        raw.close()
        naive.close()
    return runs


def service_checkpoint(args) -> Path:
    return args.data_dir / CHECKPOINT_NAME


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(results: dict) -> None:
    n = results["stream_bytes"]
    runs = results["runs"]
    med = {name: median([x["s"] for x in xs]) for name, xs in runs.items() if not name.startswith("_")}
    print()
    print(
        f"{'variant':<14}{'median s':>10}{'min s':>9}{'GB/s':>8}{'client cpu':>12}{'server cpu':>12}{'rss +MiB':>10}"
        f"{'stalls':>8}"
    )
    for name, xs in runs.items():
        if name.startswith("_"):
            continue
        rss = [x["rss_growth"] for x in xs if x.get("rss_growth") is not None]
        print(
            f"{name:<14}{med[name]:>10.3f}{min(x['s'] for x in xs):>9.3f}{n / med[name] / 1e9:>8.2f}"
            f"{median([x['client_cpu_s'] for x in xs]):>12.2f}{median([x['server_cpu_s'] for x in xs]):>12.2f}"
            f"{(max(rss) / MiB if rss else float('nan')):>10.1f}"
            f"{sum(x.get('compact_stall_delta', 0) for x in xs):>8}"
        )
    goals = []
    for kind in ("mem", "disk"):
        ratio = med[f"raw-{kind}"] / med[f"ours-{kind}"]
        goals.append((f"ours-{kind} / raw-{kind} throughput", ratio, ">= 0.7", ratio >= 0.7))
        if kind == "mem":
            fresh = med["raw-mem-fresh"] / med["ours-mem"]
            goals.append(("(info) ours-mem / raw-mem-fresh throughput", fresh, ">= 0.7", fresh >= 0.7))
            if "ours-mem-out" in med:
                into = med["raw-mem"] / med["ours-mem-out"]
                goals.append(("(info) ours-mem-out / raw-mem throughput", into, ">= 0.7", into >= 0.7))
        speedup = med[f"naive-{kind}"] / med[f"ours-{kind}"]
        goals.append((f"naive-{kind} time / ours-{kind} time", speedup, ">= 3", speedup >= 3))
    ours_rss = [x["rss_growth"] for k in ("ours-mem", "ours-mem-out", "ours-disk", "ours-mem-nv", "ours-disk-nv") for x in runs.get(k, ())]
    ours_rss += [results["first_stream"]["rss_growth"], results["sampled_stream"]["hwm_growth"]]
    worst = max(ours_rss) / MiB
    goals.append(("server peak RSS growth per full stream (MiB, worst)", worst, "< 64", worst < 64))
    if "resident" in results:
        p99 = results["resident"]["p99_s"] * 1e3
        goals.append(("resident load p99 (ms)", p99, "< 10", p99 < 10))
    report_goals(results, goals, width=56)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="checkpoint cache and scratch")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the streaming variants")
    parser.add_argument("--load-repeats", type=int, default=200, help="resident loads")
    parser.add_argument("--skip-load", action="store_true", help="skip the library/cold load comparison")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()

    checkpoint = ensure_checkpoint(args.data_dir)
    results: dict = {"machine": machine(), "versions": versions(), "source": source_state(), "model": MODEL}
    results["checkpoint_bytes"] = checkpoint_bytes(checkpoint)
    print(json.dumps({k: results[k] for k in ("machine", "versions", "source")}))
    bench_load.warm_page_cache(checkpoint)
    if not args.skip_load:
        results["library_load"] = bench_load.library_load(checkpoint)
        print(f"library load_megatron_model: {results['library_load']['load_s']:.2f} s", flush=True)
    scratch = fresh_dir(args.data_dir / "scratch")
    with Service(args.data_dir, args.data_dir / "service.log") as service, Client(service.base_url) as client:
        results["service_startup_s"] = service.startup_s
        results["service_rss_ready"] = proc_status_kib(service.pid, "VmRSS") * 1024
        model_id, results["cold_load"] = bench_load.service_cold_load(client, checkpoint)
        print(f"service cold load: {results['cold_load']['wall_s']:.2f} s", flush=True)
        if not args.skip_load:
            results["resident"] = bench_load.resident_loads(client, checkpoint, args.load_repeats)
            print(f"resident load: median {results['resident']['median_s'] * 1e3:.2f} ms", flush=True)
        results["service_rss_loaded"] = proc_status_kib(service.pid, "VmRSS") * 1024
        results["first_stream"] = timed(lambda: client.state_dict(model_id), service.pid, rss=True)
        index = client.state_dict_index(model_id)
        n = sum(s.size for s in index.shards)
        results.update(
            stream_bytes=n,
            tensor_bytes=index.total_size,
            shards=[s.size for s in index.shards],
            tensors=len(index.weight_map),
        )
        first = results["first_stream"]["s"]
        print(f"first state_dict: {first:.2f} s; {len(index.shards)} shards, {n} bytes", flush=True)
        gc.collect()
        with PeakRss(service.pid, interval=0.002) as sampled:
            client.state_dict(model_id)
        results["sampled_stream"] = {
            "hwm_growth": sampled.hwm_growth,
            "sampled_growth": sampled.sampled_growth,
            "samples": sampled.samples,
        }
        results["runs"] = rounds(args, service, client, model_id, index.shards, scratch)
        results["service_rss_end"] = proc_status_kib(service.pid, "VmRSS") * 1024
    shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.skip_load:
        lib, cold, res = results["library_load"], results["cold_load"], results["resident"]
        print(
            f"\nservice start-up to ready {results['service_startup_s']:.2f} s; "
            f"library load {lib['load_s']:.2f} s (child wall {lib['process_wall_s']:.2f} s); service cold load "
            f"{cold['wall_s']:.2f} s (ratio {cold['wall_s'] / lib['load_s']:.2f}); resident x{res['repeats']}: "
            f"median {res['median_s'] * 1e3:.2f} ms, p99 {res['p99_s'] * 1e3:.2f} ms, max {res['max_s'] * 1e3:.2f} ms"
        )
    print(
        f"sampled stream: RSS growth {results['sampled_stream']['sampled_growth'] / MiB:.1f} MiB sampled "
        f"({results['sampled_stream']['samples']} samples), "
        f"{results['sampled_stream']['hwm_growth'] / MiB:.1f} MiB VmHWM; "
        f"first stream {results['first_stream']['rss_growth'] / MiB:.1f} MiB"
    )
    summarize(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
