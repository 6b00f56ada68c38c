"""Throughput of the shard writer against a raw memcpy of the same bytes. Run by hand:

    .venv/bin/python bench/bench_shard_writer.py [--size-mib 1024] [--chunk-mib 4] [--tensors 64]

Each variant streams one shard (header + tensors) with ``iter_shard_bytes`` into a
preallocated destination buffer (as a socket write copies into the kernel), and is compared
with copying the same number of bytes from the tensors into the same buffer with numpy in
pieces of the same size. Ratio = writer throughput / memcpy throughput (1.0 = as fast as a
copy). Cast and non-contiguous variants do real work per byte, so their ratio is below 1;
``checksums`` is ``compute_checksums`` (xxh3_64) over the same tensors.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from megaload.streaming import ShardOptions, compute_checksums, iter_shard_bytes, plan_shards


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stream_into(plan, state, sink: np.ndarray, chunk: int) -> int:
    position = 0
    for piece in iter_shard_bytes(plan, 0, state, chunk_bytes=chunk):
        n = len(piece)
        sink[position : position + n] = np.frombuffer(piece, dtype=np.uint8)
        position += n
    return position


def memcpy_into(sources: list[np.ndarray], sink: np.ndarray, chunk: int) -> int:
    position = 0
    for src in sources:
        for s in range(0, src.size, chunk):
            piece = src[s : s + chunk]
            sink[position : position + piece.size] = piece
            position += piece.size
    return position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="fp32 bytes in the state dict")
    parser.add_argument("--chunk-mib", type=float, default=4.0, help="chunk_bytes of the writer and the memcpy")
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    chunk = int(args.chunk_mib * (1 << 20))
    per_tensor = (args.size_mib << 20) // args.tensors // 4
    side = int(per_tensor**0.5)
    torch.manual_seed(0)
    state = {f"layer.{i}.weight": torch.randn(side, side) for i in range(args.tensors)}
    transposed = {name: t.t() for name, t in state.items()}
    total = sum(t.numel() * 4 for t in state.values())
    print(f"state: {args.tensors} fp32 tensors of {side}x{side}, {total / 2**20:.0f} MiB; chunk {chunk / 2**20:g} MiB")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    one_shard = 1 << 36
    variants = [
        ("zero-copy fp32", state, ShardOptions(max_shard_bytes=one_shard)),
        ("cast fp32->bf16", state, ShardOptions(max_shard_bytes=one_shard, dtype=torch.bfloat16)),
        ("transposed fp32", transposed, ShardOptions(max_shard_bytes=one_shard)),
    ]
    sink = np.empty(total + (1 << 20), dtype=np.uint8)
    sink[:] = 0  # touch every page before timing
    print(f"{'variant':<18}{'bytes out':>12}{'writer GB/s':>13}{'memcpy GB/s':>13}{'ratio':>8}")
    for label, tensors, options in variants:
        plan = plan_shards(tensors, options)
        size = plan.shards[0].size
        # The baseline copies as many bytes per tensor as the writer sends for it.
        sources = [t.reshape(-1).view(torch.uint8).numpy() for t in state.values()]
        sources = [s[: plan.tensors[n].nbytes] for s, n in zip(sources, state)]
        t_writer = best_of(args.repeat, lambda: stream_into(plan, tensors, sink, chunk))
        t_copy = best_of(args.repeat, lambda: memcpy_into(sources, sink, chunk))
        writer_gbs, copy_gbs = size / t_writer / 1e9, size / t_copy / 1e9
        print(f"{label:<18}{size / 2**20:>10.0f}Mi{writer_gbs:>13.2f}{copy_gbs:>13.2f}{writer_gbs / copy_gbs:>8.2f}")

    plan = plan_shards(state, ShardOptions(max_shard_bytes=one_shard))
    t_sum = best_of(args.repeat, lambda: compute_checksums(plan, state, chunk_bytes=chunk))
    print(f"{'checksums xxh3_64':<18}{total / 2**20:>10.0f}Mi{total / t_sum / 1e9:>13.2f}")


if __name__ == "__main__":
    main()
