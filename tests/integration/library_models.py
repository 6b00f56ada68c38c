"""What the library itself says about a checkpoint, computed in a separate process.

The server under test owns this process's torch.distributed context (one per process), so
the library's own ``load_megatron_model`` runs in a child Python; it writes what it found to
files the tests read back:

* :func:`library_state_dicts`: ``load_megatron_model(path, return_state_dict=True,
  use_cpu_init=True)`` flattened with ``.`` and reduced to tensors (the fixtures' references
  are made the same way), plus the non-tensor keys of the built model's ``state_dict()``
  (``..._extra_state``), keyed as the service keys them (``model.`` + the module's key).
* :func:`generate_gpt_checkpoint`: a randomly initialized megatron-core GPT model (seeded),
  saved with the library's ``save_megatron_model``: large enough (about 90 MiB of fp32
  weights) that its shards span several files and outgrow the socket buffers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

__all__ = ["library_state_dicts", "generate_gpt_checkpoint", "GENERATED_NAME"]

GENERATED_NAME = "generated_gpt"

_LOAD = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from megaload.checkpoint import load_megatron_model

    def flatten(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    def save(path, out_tensors, out_notes):
        state = load_megatron_model(path, return_state_dict=True, use_cpu_init=True)
        tensors = {k: v.detach().clone().contiguous() for k, v in flatten(state) if isinstance(v, torch.Tensor)}
        save_file(tensors, out_tensors)
        model = load_megatron_model(path, use_cpu_init=True)
        chunks = model if isinstance(model, list) else [model]
        non_tensors = [
            ("model." if len(chunks) == 1 else f"model{i}.") + key
            for i, chunk in enumerate(chunks)
            for key, value in chunk.state_dict().items()
            if not isinstance(value, torch.Tensor)
        ]
        with open(out_notes, "w") as f:
            json.dump({"order": list(tensors), "non_tensors": non_tensors}, f)

    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        save(*args[i : i + 3])
    """
)

_GENERATE = textwrap.dedent(
    """
    import sys
    import torch
    from megaload.checkpoint import GPTModelProvider, save_megatron_model, temporary_distributed_context

    dest = sys.argv[1]
    with temporary_distributed_context("gloo"):
        torch.manual_seed(1234)
        provider = GPTModelProvider(
            num_layers=2,
            hidden_size=512,
            num_attention_heads=8,
            ffn_hidden_size=2048,
            vocab_size=16384,
            seq_length=128,
            position_embedding_type="rope",
            share_embeddings_and_output_weights=False,
            use_cpu_initialization=True,
            params_dtype=torch.float32,
        )
        model = provider.provide()
        save_megatron_model([model], dest)
    """
)

_cache: dict[Path, tuple[dict[str, torch.Tensor], list[str]]] = {}


def _run(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"library subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")


def library_state_dicts(
    checkpoints: list[Path], scratch: Path
) -> dict[Path, tuple[dict[str, torch.Tensor], list[str]]]:
    """For each checkpoint, ``(tensors, non_tensor_keys)`` as the library loads it (see the
    module docstring); ``tensors`` keeps the library's key order. Missing ones are loaded in
    one child process; ``scratch`` holds its files. Keyed by the paths given."""
    todo = [c for c in checkpoints if c.resolve() not in _cache]
    if todo:
        scratch.mkdir(parents=True, exist_ok=True)
        args: list[str] = []
        for c in todo:
            args += [str(c.resolve()), str(scratch / f"{c.name}.safetensors"), str(scratch / f"{c.name}.json")]
        _run(_LOAD, *args)
        for c in todo:
            notes = json.loads((scratch / f"{c.name}.json").read_text())
            loaded = load_file(str(scratch / f"{c.name}.safetensors"))
            _cache[c.resolve()] = ({k: loaded[k] for k in notes["order"]}, notes["non_tensors"])
    return {c: _cache[c.resolve()] for c in checkpoints}


def generate_gpt_checkpoint(root: Path) -> Path:
    """``root/generated_gpt``: the generated checkpoint, written on first call."""
    dest = root / GENERATED_NAME
    if not (dest / "latest_checkpointed_iteration.txt").exists():
        _run(_GENERATE, str(dest))
    return dest
