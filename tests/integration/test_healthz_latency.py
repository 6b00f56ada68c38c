"""/healthz answers within 50 ms while a multi-second load runs on the engine.

The checkpoint is generated for the test (1.3 GB of float32 weights, written by the library's
own save in a subprocess); its load, cast to bfloat16, keeps the engine busy for seconds.
The probe runs in its own process, as a real client would, so it does not compete with the
server for this process's GIL.

Asserted for every probe answered during the load: its latency, less the time the kernel
kept three threads runnable but off a CPU during it (the probe's, the server's event loop's
and the engine's; ``run_delay`` in ``/proc/<pid>/task/<tid>/schedstat``, read just before and
just after each request), is under 50 ms. What remains is the server's own doing: event-loop
work and GIL holds by a *running* engine thread. What is taken out is the machine's: on this
shared 2-core machine other processes take the cores for long stretches, and the engine
thread (priority lowered by 10) can be preempted while it holds the GIL, which then stalls
the loop for as long as the engine waits for a CPU. Where schedstat cannot be read the waits
count as zero, and the bound is on raw latency. Also asserted on raw latency: 95% of probes
within 50 ms, the median within 10 ms, none near the load's duration.

Measured (``n`` about 200-800 probes per load; ms; "net" = latency less the three waits):

| reader | machine | raw max | raw less probe+loop waits | net max |
| --- | --- | --- | --- | --- |
| DCP's ``torch.load`` per record | others' load, load avg 6-12 | 114-476 | up to 410 (GIL) | - |
| DCP's ``torch.load`` per record | load avg about 1 | 15-22 | - | 8 |
| DCP's ``torch.load`` per record | + 2 CPU-bound processes | 192-360 | 189-336 | 3-40 |
| ``_distcp`` (chunked reads) | others' load, load avg 4-12 | 14-28 | 4-26 | 8-15 |
| ``_distcp`` (chunked reads) | + 2 CPU-bound processes | 46-61 | 42-57 | 11-20 |

DCP's reader reads each tensor's storage inside one C call holding the GIL (15-20 ms for the
196 MB embedding when the engine thread runs; hundreds of ms when it is preempted inside).
The chunked reader holds the GIL for microseconds between reads, so preemption while holding
it is rare and short. The longest holds left (15-50 ms, found with an in-process watchdog)
are megatron-core's Python loops (``mcore_to_pyt_state_dict``, ``_validate_global_shapes``),
the engine's cast to bfloat16 (freeing each float32 parameter: ``munmap`` under the GIL, about
0.1 ms per MiB) and, under heavy contention, a full garbage collection after the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

_GENERATE = """
import sys, torch
from megaload.checkpoint import GPTModelProvider, save_megatron_model, temporary_distributed_context
with temporary_distributed_context("gloo"):
    cfg = GPTModelProvider(num_layers=8, hidden_size=1536, num_attention_heads=16, ffn_hidden_size=6144,
                           vocab_size=32000, seq_length=128, position_embedding_type="rope",
                           share_embeddings_and_output_weights=False, use_cpu_initialization=True,
                           perform_initialization=False, params_dtype=torch.float32)
    save_megatron_model([cfg.provide()], sys.argv[1])
"""

_PROBE = """
import json, sys, time, httpx
url, seconds, server_pid, loop_tid, engine_tid = sys.argv[1], float(sys.argv[2]), *sys.argv[3:6]

def run_delay(path):
    # seconds this thread has spent runnable but waiting for a CPU (0.0 when unreadable)
    try:
        with open(path) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0

mine = "/proc/thread-self/schedstat"
loop, engine = (f"/proc/{server_pid}/task/{tid}/schedstat" for tid in (loop_tid, engine_tid))
out = []
with httpx.Client(base_url=url, timeout=5) as c:
    c.get("/healthz")
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        mine0, loop0, engine0 = run_delay(mine), run_delay(loop), run_delay(engine)
        began, t0 = time.time(), time.perf_counter()
        status = c.get("/healthz").status_code
        seconds_taken = time.perf_counter() - t0
        loop1, engine1, mine1 = run_delay(loop), run_delay(engine), run_delay(mine)
        out.append((began, seconds_taken, status, mine1 - mine0 + loop1 - loop0, engine1 - engine0))
        time.sleep(0.005)
print(json.dumps(out))
"""

LIMIT_SECONDS = 0.050
STALL_SECONDS = 1.0


@pytest.fixture(scope="module")
def big_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big")
    subprocess.run([sys.executable, "-c", _GENERATE, str(root / "big")], check=True, capture_output=True, timeout=600)
    os.sync()  # no write-back of the fresh 1.3 GB while latencies are measured
    return root


def _thread_id(name: str) -> int:
    """The native id of this process's thread ``name`` (conftest runs uvicorn in "uvicorn", the
    engine runs its commands in "megaload-engine")."""
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            return thread.native_id
    raise AssertionError(f"no thread named {name!r} in the test process")


def test_healthz_is_fast_during_a_long_load(start, ckpt_root, big_root):
    with start(checkpoint_roots=[ckpt_root, big_root], memory_budget="8GiB") as svc:
        probe = subprocess.Popen(
            [
                sys.executable, "-c", _PROBE, svc.base_url, "8",
                str(os.getpid()), str(_thread_id("uvicorn")), str(_thread_id("megaload-engine")),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert probe.stdout.readline().strip() == "ready"
            r = svc.client.post(
                "/v1/models", json={"checkpoint_path": str(big_root / "big"), "dtype": "bf16", "wait": False}
            )
            assert r.status_code == 202, r.text
            job = svc.wait_job(r.json()["id"], timeout=300)
            out, _ = probe.communicate(timeout=60)
        finally:
            probe.kill()
        assert job["state"] == "succeeded", job
        started = datetime.fromisoformat(job["started_at"]).timestamp()
        finished = datetime.fromisoformat(job["finished_at"]).timestamp()
        assert finished - started > 1.0, "the load was too short to show anything"
        samples = json.loads(out.strip().splitlines()[-1])
        assert all(status == 200 for _, _, status, _, _ in samples)
        during = [s for s in samples if started <= s[0] and s[0] + s[1] <= finished]
        assert len(during) >= 50, len(during)
        # every probe: latency less the run-queue waits of the probe, the event loop, the engine
        own = sorted(
            (seconds - max(0.0, queued) - max(0.0, engine), seconds, queued, engine)
            for _, seconds, _, queued, engine in during
        )
        slow = [
            f"{o * 1e3:.1f}ms (latency {t * 1e3:.1f}, run-queue waits: probe+loop {q * 1e3:.1f}, engine {e * 1e3:.1f})"
            for o, t, q, e in own[-5:]
        ]
        assert own[-1][0] < LIMIT_SECONDS, slow
        latencies = sorted(seconds for _, seconds, _, _, _ in during)
        p95 = latencies[int(len(latencies) * 0.95) - 1]
        assert p95 < LIMIT_SECONDS, latencies[-10:]
        assert latencies[len(latencies) // 2] < LIMIT_SECONDS / 5, latencies[len(latencies) // 2]
        assert latencies[-1] < STALL_SECONDS, latencies[-5:]
        print(
            f"healthz during a {finished - started:.1f}s load: n={len(latencies)} "
            f"median={latencies[len(latencies) // 2] * 1e3:.1f}ms p95={p95 * 1e3:.1f}ms "
            f"max={latencies[-1] * 1e3:.1f}ms; "
            f"less run-queue waits: max={own[-1][0] * 1e3:.1f}ms; slowest: {slow[-1]}"
        )
