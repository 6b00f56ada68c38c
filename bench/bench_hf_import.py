"""Peak memory of importing a Hugging Face model directory, against the model's size. By hand:

    .venv/bin/python bench/bench_hf_import.py [--layers 8] [--hidden 1024] [--data-dir /tmp/megaload-bench]

Writes a Llama-shaped HF directory once (transformers ``save_pretrained``: bf16, GQA, untied,
seeded noise) under ``--data-dir``, then runs each variant in a fresh child process and reads its
peak RSS (``VmHWM``: it counts the safetensors file's pages mapped by ``safe_open``, which
are page cache, shared and reclaimable) and its peak anonymous memory (``RssAnon`` sampled every
5 ms by a thread: the process's own memory):

- ``baseline``: imports what the others import (torch, megatron-core, megaload), builds no model;
- ``model``: builds the same megatron-core model from the directory's config and touches every
  parameter (what any load must hold: the model itself, once);
- ``load``: ``load_megatron_model(hf_dir)`` (builds the model, fills it tensor by tensor);
- ``import``: ``import_hf(hf_dir, out)`` (load, then the torch_dist save);
- ``naive``: the whole state dict read into memory first (``load_file``, each tensor copied out
  of the mapping, as ``torch.load`` of a state dict holds it), then the load (the model twice).

Reported: each variant's peak RSS growth over ``baseline`` as a multiple of the model's bytes
(safetensors headers); the goal is the model once plus a tensor: ``load`` near ``model`` (1x),
well under ``naive`` (2x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, threading, time, torch
from pathlib import Path
peak_anon = [0]
def _sample():
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=_sample, daemon=True).start()
kind, hf_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
from megaload.checkpoint import (hf_model_config, import_hf, load_megatron_model, megatron_cpu_init_context,
                                 temporary_distributed_context)
if kind == "baseline":
    import megatron.core.models.gpt, safetensors.torch, megaload.hf, megaload.checkpoint._save
    with temporary_distributed_context("gloo"):
        pass
elif kind == "model":
    config = hf_model_config(hf_dir)
    config.perform_initialization = False
    with temporary_distributed_context("gloo"), megatron_cpu_init_context(config):
        model = config.provide(pre_process=True, post_process=True).bfloat16()
        for p in model.parameters():
            p.data.fill_(1)  # touched: resident
elif kind == "load":
    model = load_megatron_model(hf_dir, use_cpu_init=True)
elif kind == "import":
    import_hf(hf_dir, out)
elif kind == "naive":
    from safetensors.torch import load_file
    whole = {k: v.clone() for k, v in load_file(str(hf_dir / "model.safetensors")).items()}  # in memory
    model = load_megatron_model(hf_dir, use_cpu_init=True)
    del whole
time.sleep(0.05)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"peak_kib": hwm, "peak_anon_kib": peak_anon[0]}))
"""


def make_hf_dir(path: Path, layers: int, hidden: int) -> None:
    import torch
    import transformers

    if (path / "model.safetensors").is_file():
        return
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), head_dim=64,
        max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="100GB")


def run(kind: str, hf_dir: Path, out: Path) -> int:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(hf_dir), str(out)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["peak_kib"] * 1024, got["peak_anon_kib"] * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--data-dir", default="/tmp/megaload-bench")
    args = parser.parse_args()
    hf_dir = Path(args.data_dir) / f"hf-llama-{args.layers}x{args.hidden}"
    make_hf_dir(hf_dir, args.layers, args.hidden)
    from megaload.checkpoint import estimate_model_bytes

    model_bytes = estimate_model_bytes(hf_dir)
    print(f"model: {hf_dir} ({model_bytes / 2**20:.1f} MiB, bf16); load average {os.getloadavg()[0]:.1f}")
    peaks = {kind: run(kind, hf_dir, Path(args.data_dir) / f"import-out-{kind}")
             for kind in ("baseline", "model", "load", "import", "naive")}
    base, base_anon = peaks["baseline"]
    for kind, (peak, anon) in peaks.items():
        print(f"{kind:9s} peak RSS {peak / 2**20:8.1f} MiB (+{(peak - base) / model_bytes:5.2f} x model)   "
              f"peak anonymous {anon / 2**20:8.1f} MiB (+{(anon - base_anon) / model_bytes:5.2f} x model)")


if __name__ == "__main__":
    main()
