"""The checkpoint reader against torch DCP's own: load time and the longest GIL hold. Run by hand:

    .venv/bin/python bench/bench_reader.py [--data-dir /tmp/megaload-bench] [--repeats 3]

Each run is ``load_megatron_model(path, use_cpu_init=True)`` of the benchmark checkpoint in a
fresh child process, on a worker thread set up as the service's engine thread is (priority
lowered by 10, GIL switch interval 1 ms), with the page cache warm. Two variants, alternated:

* ``ours``: the library as it is (``_SafeFileSystemReader.read_data``: storage bytes read in
  chunks that release the GIL);
* ``stock``: the same, with the reader's ``read_data`` swapped for torch DCP's
  ``FileSystemReader.read_data`` (``torch.load`` of each tensor record).

Reported per run: the call's wall time, the process's CPU time, peak RSS, and the longest wait
of a second thread for the GIL: that thread sleeps 1 ms at a time and records how late it
wakes, less the time the kernel kept it waiting on a run queue (``schedstat``), so that what
remains is time the GIL was held by the loading thread. That is what a server's event loop
in the same process would wait for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from _gen_checkpoint import DEFAULT_DATA_DIR, ensure_checkpoint
from bench_load import warm_page_cache

_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time, traceback
    variant, path = sys.argv[1], sys.argv[2]
    from megaload.checkpoint import load_megatron_model
    from megaload.checkpoint import _reader
    if variant == "stock":
        from torch.distributed.checkpoint import FileSystemReader
        _reader._SafeFileSystemReader.read_data = FileSystemReader.read_data
    import megatron.core.dist_checkpointing, megatron.core.models.gpt  # what the engine imports up front
    import gc
    gc.collect(); gc.freeze()
    sys.setswitchinterval(0.001)

    def run_queue_wait():
        try:
            with open("/proc/thread-self/schedstat") as f:
                return int(f.read().split()[1]) / 1e9
        except OSError:
            return 0.0

    result, done, worker = {}, threading.Event(), {}

    def load():
        worker["id"] = threading.get_ident()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass
        cpu, began = time.process_time(), time.perf_counter()
        load_megatron_model(path, use_cpu_init=True)
        result["load_s"], result["cpu_s"] = time.perf_counter() - began, time.process_time() - cpu
        done.set()

    thread = threading.Thread(target=load)
    thread.start()
    waits = []
    while not done.is_set():
        queued, began = run_queue_wait(), time.perf_counter()
        time.sleep(0.001)
        waited = time.perf_counter() - began - 0.001 - (run_queue_wait() - queued)
        if waited > 0.010:
            frame = sys._current_frames().get(worker.get("id"))
            where = traceback.extract_stack(frame)[-1] if frame is not None else None
            waits.append((waited, f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno} {where.name}" if where else "?"))
    thread.join()
    waits.sort(reverse=True)
    result["gil_wait_max_ms"] = round(waits[0][0] * 1e3, 1) if waits else 0.0
    result["gil_waits_over_50ms"] = sum(w > 0.050 for w, _ in waits)
    result["gil_wait_max_at"] = waits[0][1] if waits else ""
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(json.dumps(result))
    """
)


def one_run(variant: str, checkpoint: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, variant, str(checkpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} load failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    checkpoint = ensure_checkpoint(args.data_dir)
    warm_page_cache(checkpoint)
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    runs: dict[str, list[dict]] = {"stock": [], "ours": []}
    for _ in range(args.repeats):
        for variant in runs:
            result = one_run(variant, checkpoint)
            runs[variant].append(result)
            print(f"{variant:5s} {json.dumps(result)}")
    for variant, results in runs.items():
        print(
            f"{variant:5s} median load {statistics.median(r['load_s'] for r in results):6.2f} s  "
            f"cpu {statistics.median(r['cpu_s'] for r in results):6.2f} s  "
            f"peak RSS {max(r['peak_rss_gib'] for r in results):5.2f} GiB  "
            f"longest GIL wait {max(r['gil_wait_max_ms'] for r in results):6.1f} ms"
        )
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
