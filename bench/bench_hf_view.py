"""Streaming a model under Hugging Face names against streaming it under Megatron names. Run by hand:

    .venv/bin/python bench/bench_hf_view.py [--layers 8] [--hidden 2048] [--groups 4] [--repeat 3]

No HTTP: both variants plan the same model's shards with ``plan_shards`` and write every shard
with ``iter_shard_bytes`` into one preallocated, touched buffer (as a socket write copies into
the kernel). ``megatron`` streams ``model_state_dict`` as it is; ``hf`` streams the HF view's
``lazy_tensors`` of the same state dict, which splits q/k/v (copies, one tensor at a time, when
there are several query groups), gate/up (views) and drops padded vocabulary rows (a view).
Ratio = hf throughput / megatron throughput over the bytes each sends (goal: at least 0.8).
Peak RSS growth (the largest over the runs of a variant) is read after resetting the high-water
mark (Linux ``clear_refs``); freed copies are often reused by the allocator in later runs.

The model is a megatron-core GPTModel (Llama-shaped: GQA, SwiGLU, RMSNorm, rope, untied,
vocabulary padded) built in bf16 on CPU with uninitialized weights, then filled with noise.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from megaload.checkpoint import GPTModelProvider, model_state_dict, temporary_distributed_context
from megaload.hf import hf_view
from megaload.streaming import ShardOptions, iter_shard_bytes, plan_shards

_CHUNK = 8 << 20


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def stream(tensors, sink: np.ndarray, max_shard_bytes: int) -> int:
    plan = plan_shards(tensors, ShardOptions(max_shard_bytes=max_shard_bytes))
    position = 0
    for shard in plan.shards:
        for piece in iter_shard_bytes(plan, shard.index, tensors, chunk_bytes=_CHUNK):
            n = len(piece)
            sink[position : position + n] = np.frombuffer(piece, dtype=np.uint8)
            position += n
        position = 0  # each shard overwrites the buffer, as successive responses would
    return plan.total_size + sum(s.header_size for s in plan.shards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4, help="query groups (1: q/k/v are views, no copy)")
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    provider = GPTModelProvider(
        num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads, num_query_groups=args.groups,
        ffn_hidden_size=args.ffn, add_bias_linear=False, gated_linear_unit=True, activation_func=F.silu,
        normalization="RMSNorm", position_embedding_type="rope", share_embeddings_and_output_weights=False,
        vocab_size=args.vocab, should_pad_vocab=True, make_vocab_size_divisible_by=128, seq_length=4096, bf16=True,
        params_dtype=torch.bfloat16, use_cpu_initialization=True, perform_initialization=False,
    )
    with temporary_distributed_context("gloo"):
        model = provider.provide(pre_process=True, post_process=True)
    state = model_state_dict(model)
    with torch.no_grad():
        for tensor in state.values():
            tensor.normal_()
    view = hf_view(provider)
    lazy = view.lazy_tensors(state)
    mcore_bytes = sum(t.numel() * t.element_size() for t in state.values())
    print(f"model: {view.architecture}, {args.layers} layers, hidden {args.hidden}, {args.heads} heads / "
          f"{args.groups} groups, bf16, {mcore_bytes / 2**20:.0f} MiB under Megatron names")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    max_shard = args.shard_mib << 20
    sink = np.empty(max_shard + (64 << 20), dtype=np.uint8)
    sink[:] = 0
    results = {}
    for label, tensors in (("megatron", state), ("hf", lazy)):
        times, growth = [], 0.0
        for _ in range(args.repeat):
            _reset_peak()
            base = _rss_kib("VmRSS")
            start = time.perf_counter()
            sent = stream(tensors, sink, max_shard)
            times.append(time.perf_counter() - start)
            growth = max(growth, (_rss_kib("VmHWM") - base) / 1024)
        best = min(times)
        results[label] = sent / best
        print(f"{label:<9} {sent / 2**20:8.0f} MiB  best {best:6.3f} s  {sent / best / 1e9:6.2f} GB/s  "
              f"peak RSS growth {growth:7.1f} MiB  (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"ratio hf / megatron: {results['hf'] / results['megatron']:.2f}  (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
