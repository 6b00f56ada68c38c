"""The benchmarks' GPT checkpoint: real megatron-core, random init with a seed, written once.

Run by hand to generate it alone (the benchmarks call :func:`ensure_checkpoint` themselves)::

    .venv/bin/python bench/_gen_checkpoint.py [--data-dir /tmp/megaload-bench]

The model is a megatron-core GPT built through the library (``GPTModelProvider`` inside
``temporary_distributed_context`` and ``megatron_cpu_init_context``), initialized with
``torch.manual_seed(seed)`` and saved with ``save_megatron_model``: 6 layers, hidden 1536,
16 heads, FFN 6144, vocabulary 40960 (untied input and output embeddings), fp32, about
1.1 GiB of weights (``--dtype bf16``: the same model in bf16, 0.55 GiB). Generation runs in a child process so the caller's process never holds a
torch.distributed context or the model. The checkpoint is written to a temporary directory
and renamed into place, so an interrupted run leaves nothing that looks complete; a later
run reuses it. Peak memory of the generation is about twice the model (model plus the save's
staging), well inside a 24 GiB machine.

``bench_hf_service.py`` needs a model that has a Hugging Face form: :data:`LLAMA_MODEL` (same
sizes, but RMSNorm, SwiGLU and 4 query groups: a Llama, about 1.0 GiB fp32), generated the
same way by ``ensure_checkpoint(data_dir, name=LLAMA_CHECKPOINT_NAME, model=LLAMA_MODEL)``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

__all__ = [
    "DEFAULT_DATA_DIR",
    "MODEL",
    "CHECKPOINT_NAME",
    "CHECKPOINT_NAMES",
    "LLAMA_MODEL",
    "LLAMA_CHECKPOINT_NAME",
    "ensure_checkpoint",
    "checkpoint_bytes",
]

DEFAULT_DATA_DIR = Path("/tmp/megaload-bench")
CHECKPOINT_NAME = "gpt_1p1g_fp32"
# The same model in bf16 (0.55 GiB), as Hugging Face imports are: bf16 flag, bf16 parameters,
# norms included (cast as upstream's builder casts a bf16 model).
CHECKPOINT_NAMES = {"fp32": CHECKPOINT_NAME, "bf16": "gpt_1p1g_bf16"}
MODEL = {
    "num_layers": 6,
    "hidden_size": 1536,
    "num_attention_heads": 16,
    "ffn_hidden_size": 6144,
    "vocab_size": 40960,
    "seq_length": 2048,
}
LLAMA_CHECKPOINT_NAME = "llama_1p0g_fp32"
LLAMA_MODEL = {
    **MODEL,
    "ffn_hidden_size": 4096,
    "num_query_groups": 4,
    "normalization": "RMSNorm",
    "gated_linear_unit": True,
    "activation_func": "silu",
    "add_bias_linear": False,
}
SEED = 1234

_GENERATE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from megaload.checkpoint import (
        GPTModelProvider, megatron_cpu_init_context, save_megatron_model, temporary_distributed_context,
    )

    dest, model, seed, dtype = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if model.get("activation_func") == "silu":
        model["activation_func"] = torch.nn.functional.silu
    began = time.perf_counter()
    with temporary_distributed_context("gloo"):
        provider = GPTModelProvider(
            **model,
            position_embedding_type="rope",
            share_embeddings_and_output_weights=False,
            params_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
            bf16=dtype == "bf16",
        )
        torch.manual_seed(seed)
        with megatron_cpu_init_context(provider):
            chunk = provider.provide()
        if dtype == "bf16":
            chunk.bfloat16()
        params = sum(p.numel() for p in chunk.parameters())
        built = time.perf_counter()
        save_megatron_model([chunk], dest)
    print(json.dumps({"parameters": params, "build_s": built - began, "save_s": time.perf_counter() - built}))
    """
)


def checkpoint_bytes(path: Path) -> int:
    """Bytes of every file under the checkpoint directory."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ensure_checkpoint(
    data_dir: Path,
    *,
    dtype: str = "fp32",
    name: str | None = None,
    model: dict | None = None,
    python: str = sys.executable,
    log=print,
) -> Path:
    """``data_dir/CHECKPOINT_NAMES[dtype]``, generated on first use (about 20 s on 2 cores);
    with ``model`` (and its ``name``), that model instead of :data:`MODEL`."""
    if (model is None) != (name is None):
        raise ValueError("pass model and name together")
    model = MODEL if model is None else model
    name = CHECKPOINT_NAMES[dtype] if name is None else name
    dest = Path(data_dir) / name
    if (dest / "latest_checkpointed_iteration.txt").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log(f"generating {dest} (megatron-core GPT {model}, {dtype}, seed {SEED})...")
    began = time.perf_counter()
    done = subprocess.run(
        [python, "-c", _GENERATE, str(partial), json.dumps(model), str(SEED), dtype],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"checkpoint generation failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    partial.rename(dest)
    log(
        f"generated {report['parameters'] / 1e6:.1f}M parameters, {checkpoint_bytes(dest) / 2**30:.2f} GiB on disk "
        f"in {time.perf_counter() - began:.0f} s (build {report['build_s']:.0f} s, save {report['save_s']:.0f} s)"
    )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where the checkpoint is cached")
    parser.add_argument("--dtype", choices=sorted(CHECKPOINT_NAMES), default="fp32")
    args = parser.parse_args()
    path = ensure_checkpoint(args.data_dir, dtype=args.dtype)
    print(f"{path}: {checkpoint_bytes(path) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
