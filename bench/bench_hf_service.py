"""The Hugging Face view against Megatron names: the same resident model, the same run.

    .venv/bin/python bench/bench_hf_service.py [--data-dir /tmp/megaload-bench] [--repeats 5] [--json out.json]

What runs, in order:

1. the checkpoint: a 1.0 GiB fp32 Llama-style megatron-core GPT (``_gen_checkpoint.LLAMA_MODEL``:
   6 layers, hidden 1536, 16 heads in 4 query groups, SwiGLU FFN 4096, RMSNorm, vocabulary
   40960 untied), generated once and cached under ``--data-dir``, read into the page cache;
2. a fresh ``megaload serve`` child (CPU, ``--memory-budget 8GiB``) loads it;
3. the first index of each view (the service plans the shards and computes the checksums,
   which for ``names=hf`` builds every HF tensor once), timed for information;
4. ``--repeats`` rounds; each round runs every variant once, Megatron and HF in turn (the
   order alternates from round to round, so neither always follows the other):

   mg-mem / hf-mem    ``Client.state_dict(model_id[, names="hf"])``: index, shards in
                      parallel (4 workers) into fresh memory, checksums verified.
   mg-direct / hf-direct  every shard fetched with the standard library (``http.client``,
                      ``readinto`` a prefaulted buffer, one thread per shard): the server's
                      side alone, without the SDK's checks.
   mg-disk / hf-disk  ``Client.download(model_id, fresh dir[, names="hf"])`` (the HF one also
                      writes config.json and generation_config.json).
   hub-disk           ``huggingface_hub.snapshot_download("megaload/<id>", endpoint=.../hf,
                      local_dir=fresh dir)``: the Hub endpoint read by the real Hub client
                      (diagnostic; its own HTTP stack and 8 workers).

   Every variant reads the service's ``VmHWM`` after resetting it (``clear_refs``) for its
   peak RSS growth, and records the CPU seconds of both processes.

Throughput = the bytes of the view's shard files / wall time (the HF view drops nothing here:
no vocabulary padding; its shards differ from Megatron's by their headers). Ratios use the
median over the rounds. Goals: hf / mg throughput >= 0.8 (memory and disk); the server's peak
RSS growth while streaming the HF view < 64 MiB beyond its growth while streaming Megatron
names.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import bench_load
from _gen_checkpoint import (
    DEFAULT_DATA_DIR,
    LLAMA_CHECKPOINT_NAME,
    LLAMA_MODEL,
    checkpoint_bytes,
    ensure_checkpoint,
)
from _service import Service, machine, proc_status_kib, report_goals
from bench_streaming import direct_fetch, fresh_dir, median, parallel, source_state, timed, versions

from megaload_client import Client

MiB = 1 << 20
VIEWS = {"mg": "megatron", "hf": "hf"}


def rounds(args, service: Service, client: Client, model_id: str, sizes: dict, scratch: Path) -> dict[str, list]:
    from huggingface_hub import snapshot_download

    runs: dict[str, list[dict]] = {}
    paths = {
        view: [f"/v1/models/{model_id}/state_dict/{i}" + ("?names=hf" if view == "hf" else "") for i in range(len(s))]
        for view, s in sizes.items()
    }
    for r in range(args.repeats):
        order = ["mg", "hf"] if r % 2 == 0 else ["hf", "mg"]

        def record(name: str, fn, nbytes: int) -> None:
            result = timed(fn, service.pid, rss=True)
            result["bytes"] = nbytes
            runs.setdefault(name, []).append(result)
            print(
                f"  round {r + 1} {name:<10}{result['s']:8.3f} s  {nbytes / result['s'] / 1e9:6.2f} GB/s"
                f"  rss +{result['rss_growth'] / MiB:.1f} MiB",
                flush=True,
            )

        for view in order:
            total = sum(sizes[view])
            record(f"{view}-mem", lambda: client.state_dict(model_id, names=VIEWS[view]), total)
        for view in order:
            buffers = [bytearray(size) for size in sizes[view]]
            jobs = list(zip(paths[view], buffers))
            record(f"{view}-direct", lambda: parallel(partial(direct_fetch, service.port), jobs), sum(sizes[view]))
            del jobs, buffers
        for view in order:
            target = fresh_dir(scratch / f"{view}-disk")
            record(f"{view}-disk", lambda: client.download(model_id, target, names=VIEWS[view]), sum(sizes[view]))
            shutil.rmtree(target)
        target = fresh_dir(scratch / "hub-disk")
        hub = partial(
            snapshot_download, f"megaload/{model_id}", endpoint=f"{service.base_url}/hf", local_dir=target
        )
        record("hub-disk", hub, sum(sizes["hf"]))
        shutil.rmtree(target)
    return runs


def summarize(results: dict) -> None:
    runs = results["runs"]
    med = {name: median([x["s"] for x in xs]) for name, xs in runs.items()}
    rate = {name: runs[name][0]["bytes"] / med[name] for name in runs}
    print()
    print(f"{'variant':<12}{'median s':>10}{'min s':>9}{'GB/s':>8}{'client cpu':>12}{'server cpu':>12}{'rss +MiB':>10}")
    for name, xs in runs.items():
        print(
            f"{name:<12}{med[name]:>10.3f}{min(x['s'] for x in xs):>9.3f}{rate[name] / 1e9:>8.2f}"
            f"{median([x['client_cpu_s'] for x in xs]):>12.2f}{median([x['server_cpu_s'] for x in xs]):>12.2f}"
            f"{max(x['rss_growth'] for x in xs) / MiB:>10.1f}"
        )
    goals = []
    for kind in ("mem", "disk", "direct"):
        ratio = rate[f"hf-{kind}"] / rate[f"mg-{kind}"]
        label = "" if kind != "direct" else "(info) "
        goals.append((f"{label}hf-{kind} / mg-{kind} throughput", ratio, ">= 0.8", ratio >= 0.8))
    for kind in ("mem", "disk", "direct"):
        extra = (max(x["rss_growth"] for x in runs[f"hf-{kind}"]) - max(x["rss_growth"] for x in runs[f"mg-{kind}"])) / MiB
        goals.append((f"server RSS growth, hf-{kind} beyond mg-{kind} (MiB, worst)", extra, "< 64", extra < 64))
    worst = max(x["rss_growth"] for name in runs if name.startswith(("hf-", "hub-")) for x in runs[name]) / MiB
    goals.append(("(info) server RSS growth, any HF stream (MiB, worst)", worst, "< 64", worst < 64))
    report_goals(results, goals, width=58)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="checkpoint cache and scratch")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the variants")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()

    checkpoint = ensure_checkpoint(args.data_dir, name=LLAMA_CHECKPOINT_NAME, model=LLAMA_MODEL)
    results: dict = {"machine": machine(), "versions": versions(), "source": source_state(), "model": LLAMA_MODEL}
    results["checkpoint_bytes"] = checkpoint_bytes(checkpoint)
    print(json.dumps({k: results[k] for k in ("machine", "versions", "source")}))
    bench_load.warm_page_cache(checkpoint)
    scratch = fresh_dir(args.data_dir / "scratch-hf")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with Service(args.data_dir, args.data_dir / "service-hf.log") as service, Client(service.base_url) as client:
        model_id, results["cold_load"] = bench_load.service_cold_load(client, checkpoint)
        print(f"service cold load: {results['cold_load']['wall_s']:.2f} s", flush=True)
        results["service_rss_loaded"] = proc_status_kib(service.pid, "VmRSS") * 1024
        sizes = {}
        for view, names in VIEWS.items():
            began = time.perf_counter()
            index = client.state_dict_index(model_id, names=names)
            results[f"{view}_first_index_s"] = time.perf_counter() - began
            sizes[view] = [s.size for s in index.shards]
            results[f"{view}_tensors"] = len(index.weight_map)
            print(
                f"{names}: first index {results[f'{view}_first_index_s']:.2f} s (plan + checksums), "
                f"{len(index.weight_map)} tensors, {len(index.shards)} shards, {sum(sizes[view])} bytes",
                flush=True,
            )
        results["shard_sizes"] = sizes
        gc.collect()
        results["runs"] = rounds(args, service, client, model_id, sizes, scratch)
        results["service_rss_end"] = proc_status_kib(service.pid, "VmRSS") * 1024
    shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summarize(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
