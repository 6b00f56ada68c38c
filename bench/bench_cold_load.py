"""Cold loads side by side with upstream Megatron Bridge (issue 15). Run by hand:

    .venv/bin/python bench/bench_cold_load.py [--data-dir /tmp/megaload-bench] [--oracle-python PY]
                                             [--dtype fp32 --dtype bf16] [--trials 2] [--json out.json]

For each checkpoint (the benchmarks' 1.1 GiB megatron-core GPT in fp32, and the same model in
bf16), with its files warm in the page cache, in one run:

* floor: the checkpoint's files read from the page cache, (a) through one reused 16 MiB buffer
  (the copy alone) and (b) into fresh memory of the files' size (the copy plus the kernel's
  price of new pages, which any load into new tensors pays);
* upstream: Megatron Bridge 0.3.1's ``load_megatron_model(path, return_state_dict=True,
  use_cpu_init=True)`` in the oracle's venv (``../shared/oracle``, made by ``make
  test-upstream``), ``--trials`` calls in one process (imports paid once, before the first);
* library: our ``load_megatron_model`` with the same arguments, one fresh process per trial
  (imports excluded from the time, as for upstream), and ``load_megatron_model(path,
  use_cpu_init=True)`` (the model itself) likewise;
* service: a fresh, ready ``megaload serve`` per trial, ``POST /v1/models`` (the client's wall
  time), and the server's peak RSS growth during the load.

Fresh memory on a VM. On the bench VM (a Firecracker guest) memory the guest freed is handed
back to the host, and the first touch of it again costs a host-side fault: 1.1 GiB of fresh huge
pages took 8.1 s to fault the first time and 0.28 s right after, in the next process. Whichever
variant ran first after a quiet spell paid that. So before each measured load the measuring process
touches and frees twice the checkpoint's size (``prefault``), and every variant starts from
memory the host backs; ``--no-prefault`` measures without it. (The VM's balloon device reports
free pages to the host, which is why: see ``megaload/checkpoint/_huge_pages.py``.)

Huge pages. Our loads advise huge pages for the parameters they fill (``MEGALOAD_HUGE_PAGES``).
Its ``auto`` turns that off on a VM whose balloon reports free pages, like this one, because there
a fresh huge page costs a host fault per 4 KiB. With prefault that cost is gone (the memory is
host-backed, as on a host without free page reporting, where ``auto`` turns it on), so the bench
runs ours with ``--huge-pages on`` by default; ``--huge-pages auto`` measures what this VM gets.
The floor is given for both page sizes.

Each figure is the best of ``--trials``. Ratios are upstream's time over ours (higher is better;
goal at least 2x, issue 15). Peak RSS is each process's ``VmHWM`` (reset by writing 5 to
``/proc/self/clear_refs`` just before the load) minus its RSS at that point, against the model's
bytes (goal: at most 1.1x). The load average is printed at start and end: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _gen_checkpoint import CHECKPOINT_NAMES, DEFAULT_DATA_DIR, checkpoint_bytes, ensure_checkpoint
from _service import PeakRss, Service, machine
from bench_load import warm_page_cache

from megaload_client import Client

REPO = Path(__file__).resolve().parents[1]
ORACLE_DIR = REPO.parent / "shared" / "oracle"
DEFAULT_ORACLE_PYTHON = REPO / ".venv-oracle" / "bin" / "python"

# Shared by both children: timing and peak RSS of one call, in this process.
_MEASURE = textwrap.dedent(
    """
    import gc, json, sys, time

    def _status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def prefault(nbytes):
        # Touch and free this much fresh memory, so the load finds memory the host backs (see
        # "Fresh memory on a VM" in the module docstring); huge pages, one write per 2 MiB.
        import mmap
        if nbytes <= 0:
            return
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
        view = memoryview(m)
        for offset in range(0, nbytes, 1 << 21):
            view[offset] = 1
        view.release()
        m.close()

    def measure(call, prefault_bytes=0):
        gc.collect()
        prefault(prefault_bytes)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status("VmRSS")
        began = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - began
        peak = _status("VmHWM") - before
        return result, {"seconds": seconds, "peak_rss_growth": peak}

    def tensor_bytes(tree):
        import torch
        if isinstance(tree, dict):
            return sum(tensor_bytes(v) for k, v in tree.items() if "_extra_state" not in str(k))
        if isinstance(tree, torch.Tensor):
            return tree.numel() * tree.element_size()
        return 0
    """
)

_UPSTREAM = _MEASURE + textwrap.dedent(
    """
    oracle_dir, path, trials, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.path.insert(0, oracle_dir)
    import cpu_shims
    cpu_shims.import_bridge()
    from megatron.bridge.training.model_load_save import load_megatron_model
    runs = []
    for _ in range(trials):
        state, run = measure(lambda: load_megatron_model(path, return_state_dict=True, use_cpu_init=True), warm)
        run["bytes"] = tensor_bytes(state)
        del state
        runs.append(run)
    print(json.dumps(runs))
    """
)

_OURS = _MEASURE + textwrap.dedent(
    """
    path, mode, warm = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from megaload.checkpoint import load_megatron_model, model_state_dict
    if mode == "state_dict":
        state, run = measure(lambda: load_megatron_model(path, return_state_dict=True, use_cpu_init=True), warm)
        run["bytes"] = tensor_bytes(state)
    else:
        model, run = measure(lambda: load_megatron_model(path, use_cpu_init=True), warm)
        run["bytes"] = tensor_bytes(model_state_dict(model))
    print(json.dumps(run))
    """
)


def floor(path: Path, warm: int) -> dict[str, float]:
    namespace: dict = {}
    exec(_MEASURE, namespace)  # noqa: S102 - our own helper text, for prefault()
    files = [f for f in sorted(path.rglob("*")) if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    scratch = bytearray(16 << 20)
    view = memoryview(scratch)
    began = time.perf_counter()
    for file in files:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    reused = time.perf_counter() - began
    fresh_s = {}
    for pages in ("4k", "huge"):
        namespace["prefault"](warm)
        began = time.perf_counter()
        fresh = mmap.mmap(-1, total)
        if pages == "huge":
            fresh.madvise(mmap.MADV_HUGEPAGE)
        offset = 0
        target = memoryview(fresh)
        for file in files:
            with open(file, "rb", buffering=0) as f:
                while n := f.readinto(target[offset : offset + (16 << 20)]):
                    offset += n
        fresh_s[pages] = time.perf_counter() - began
        target.release()
        fresh.close()
    return {"bytes": total, "reused_buffer_s": reused, "fresh_memory_s": fresh_s["4k"], "fresh_huge_pages_s": fresh_s["huge"]}


def _child(command: list[str]) -> object:
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def upstream(oracle_python: Path, path: Path, trials: int, warm: int) -> list[dict]:
    return _child([str(oracle_python), "-c", _UPSTREAM, str(ORACLE_DIR), str(path), str(trials), str(warm)])


def library(path: Path, mode: str, trials: int, warm: int) -> list[dict]:
    return [_child([sys.executable, "-c", _OURS, str(path), mode, str(warm)]) for _ in range(trials)]


def service(path: Path, log_path: Path, trials: int, warm: int) -> list[dict]:
    runs = []
    namespace: dict = {}
    exec(_MEASURE, namespace)  # noqa: S102 - our own helper text, for prefault()
    for _ in range(trials):
        with Service(path.parent.parent, log_path) as svc, Client(svc.base_url) as client:
            namespace["prefault"](warm)
            with PeakRss(svc.pid) as rss:
                began = time.perf_counter()
                handle = client.load(str(path))
                seconds = time.perf_counter() - began
            runs.append({
                "seconds": seconds, "service_load_seconds": handle.info.load_seconds,
                "peak_rss_growth": rss.hwm_growth, "bytes": handle.info.size_bytes,
            })  # fmt: skip
    return runs


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--oracle-python", type=Path, default=DEFAULT_ORACLE_PYTHON)
    parser.add_argument("--dtype", action="append", choices=sorted(CHECKPOINT_NAMES))
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-prefault", action="store_true", help="measure loads into memory the host may not back yet")
    parser.add_argument(
        "--huge-pages", choices=("auto", "on", "off"), default="on",
        help="MEGALOAD_HUGE_PAGES for our loads (default on: with prefault the VM's memory is host-backed, "
        "as on a host without free page reporting, where auto picks on)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ["MEGALOAD_HUGE_PAGES"] = args.huge_pages  # our children and servers inherit it
    if not args.oracle_python.is_file():
        parser.error(f"no oracle venv at {args.oracle_python}: run `make test-upstream` once, or pass --oracle-python")
    results: dict[str, object] = {
        "machine_start": machine(), "trials": args.trials, "huge_pages": args.huge_pages,
        "prefault": not args.no_prefault, "checkpoints": {},
    }  # fmt: skip
    print(json.dumps(results["machine_start"]), f"huge pages for our loads: {args.huge_pages}")
    for dtype in args.dtype or ["fp32", "bf16"]:
        save_dir = ensure_checkpoint(args.data_dir, dtype=dtype)
        iteration = int((save_dir / "latest_checkpointed_iteration.txt").read_text())
        path = save_dir / f"iter_{iteration:07d}"  # upstream's loader takes iteration directories only
        warm_page_cache(path)
        warm = 0 if args.no_prefault else 2 * checkpoint_bytes(save_dir)
        row = {
            "checkpoint_bytes": checkpoint_bytes(save_dir),
            "prefault_bytes": warm,
            "floor": floor(path, warm),
            "upstream": upstream(args.oracle_python, path, args.trials, warm),
            "library_state_dict": library(path, "state_dict", args.trials, warm),
            "library_model": library(path, "model", args.trials, warm),
            "service": service(path, args.data_dir / "service.log", args.trials, warm),
        }
        results["checkpoints"][dtype] = row
        up = best(row["upstream"])
        print(f"\n{dtype}: {row['checkpoint_bytes'] / 2**30:.2f} GiB on disk, {up['bytes'] / 2**30:.2f} GiB of tensors")
        print(f"  floor: page cache -> reused buffer {row['floor']['reused_buffer_s']:.3f} s, "
              f"-> fresh memory {row['floor']['fresh_memory_s']:.3f} s, "
              f"-> fresh huge pages {row['floor']['fresh_huge_pages_s']:.3f} s")  # fmt: skip
        for name in ("upstream", "library_state_dict", "library_model", "service"):
            run = best(row[name])
            ratio = up["seconds"] / run["seconds"]
            rss = run["peak_rss_growth"]
            rss_text = f"peak RSS {rss / run['bytes']:.2f}x model" if rss is not None and run["bytes"] else "peak RSS n/a"
            every = ", ".join(f"{r['seconds']:.3f}" for r in row[name])
            print(f"  {name:20s} {run['seconds']:7.3f} s  upstream/this {ratio:5.2f}x  {rss_text}  (all: {every})")
    results["machine_end"] = machine()
    print("\n" + json.dumps(results["machine_end"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
