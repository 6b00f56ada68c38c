"""Cold and resident loads through the service against the library's own loader. Run by hand:

    .venv/bin/python bench/bench_load.py [--data-dir /tmp/megaload-bench] [--repeats 200]

(``bench/bench_streaming.py`` runs these same measurements as part of its full run.)

* library: ``load_megatron_model(path, use_cpu_init=True)`` in a fresh child process; the
  time of that call alone, measured in the child (imports excluded: the service's start-up
  pays those before it is ready, too). The child's whole wall time is reported alongside.
* cold (service): ``Client.load(path)`` (``POST /v1/models``, ``wait=true``) against a fresh
  ``megaload serve`` that is ready (``/readyz`` 200) and holds nothing; wall time at the
  client, and the ``load_seconds`` the service reports.
* resident: the same ``Client.load(path)`` repeated ``--repeats`` times once the model is
  resident (answered 200 from the registry); median, p99 and max. Goal: under 10 ms.

The checkpoint's files are read once into the page cache before either load, so both read
from memory, not from disk (the cache is not dropped: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _gen_checkpoint import DEFAULT_DATA_DIR, ensure_checkpoint
from _service import Service, machine

from megaload_client import Client

__all__ = ["library_load", "service_cold_load", "resident_loads", "warm_page_cache", "percentile"]

RESIDENT_GOAL_S = 0.010

_LIBRARY_LOAD = textwrap.dedent(
    """
    import json, sys, time
    began = time.perf_counter()
    from megaload.checkpoint import load_megatron_model
    imported = time.perf_counter()
    model = load_megatron_model(sys.argv[1], use_cpu_init=True)
    loaded = time.perf_counter()
    chunks = model if isinstance(model, list) else [model]
    params = sum(p.numel() for chunk in chunks for p in chunk.parameters())
    print(json.dumps({"import_s": imported - began, "load_s": loaded - imported, "parameters": params}))
    """
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def warm_page_cache(path: Path) -> None:
    for file in sorted(path.rglob("*")):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(16 << 20):
                    pass


def library_load(checkpoint: Path) -> dict[str, float]:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _LIBRARY_LOAD, str(checkpoint)], capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"library load failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def service_cold_load(client: Client, checkpoint: Path) -> tuple[str, dict[str, float]]:
    """Load into a fresh, ready service; the model's id and the timings."""
    began = time.perf_counter()
    handle = client.load(str(checkpoint))
    wall = time.perf_counter() - began
    return handle.id, {
        "wall_s": wall,
        "service_load_seconds": handle.info.load_seconds,
        "size_bytes": handle.info.size_bytes,
        "parameters": handle.info.parameter_count,
    }


def resident_loads(client: Client, checkpoint: Path, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        client.load(str(checkpoint))
        times.append(time.perf_counter() - began)
    return {
        "repeats": repeats,
        "median_s": statistics.median(times),
        "p99_s": percentile(times, 99),
        "max_s": max(times),
        "min_s": min(times),
        "times_ms": [round(t * 1e3, 3) for t in times],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    checkpoint = ensure_checkpoint(args.data_dir)
    print(json.dumps(machine()))
    warm_page_cache(checkpoint)
    library = library_load(checkpoint)
    with Service(checkpoint.parent, args.data_dir / "service.log") as service, Client(service.base_url) as client:
        print(f"service start-up to ready {service.startup_s:8.2f} s")
        _, cold = service_cold_load(client, checkpoint)
        resident = resident_loads(client, checkpoint, args.repeats)
    print(f"library load_megatron_model      {library['load_s']:8.2f} s (child wall {library['process_wall_s']:.2f} s)")
    print(
        f"service cold load (POST)         {cold['wall_s']:8.2f} s (service says {cold['service_load_seconds']:.2f} s)"
        f"  ratio to library {cold['wall_s'] / library['load_s']:.2f}"
    )
    verdict = "met" if resident["p99_s"] < RESIDENT_GOAL_S else "MISSED"
    print(
        f"resident load x{resident['repeats']}  median {resident['median_s'] * 1e3:.2f} ms  "
        f"p99 {resident['p99_s'] * 1e3:.2f} ms  max {resident['max_s'] * 1e3:.2f} ms  (goal < 10 ms: {verdict})"
    )


if __name__ == "__main__":
    main()
