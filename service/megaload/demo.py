"""The embedded demo: a small deterministic GPT checkpoint, and the ``make run`` launcher.

:func:`ensure_demo_checkpoint` writes, once, into a data directory::

    data_dir/
        demo-tokenizer/        a byte-level BPE tokenizer (Hugging Face ``tokenizer.json``)
        demo-gpt/              a megatron-core torch_dist checkpoint in Megatron Bridge's layout
            latest_checkpointed_iteration.txt
            iter_0000000/      weights, common.pt, run_config.yaml, tokenizer/

The model is a real megatron-core ``GPTModel`` (4 layers, hidden size 128, RoPE, RMSNorm,
SwiGLU, tied embeddings, float32 weights; about 4.5 MB on disk), built with
:class:`~megaload.checkpoint.GPTModelProvider` under CPU initialization and saved with
:func:`~megaload.checkpoint.save_megatron_model`; a fixed seed makes every write produce the
same tensors. Both parts are published by an atomic rename, so a crash
leaves either nothing or a complete directory; a later call finds them and returns at once
(without importing torch). It needs a process without a torch.distributed default group: run
it before the service's engine starts (``make run`` runs it in its own process).

``python -m megaload.demo [--data-dir DIR]`` writes the demo and prints its path.
``python -m megaload.demo --data-dir DIR --serve [SERVE FLAGS]`` is what ``make run`` calls:
it reads the settings as ``megaload serve`` would (``MEGALOAD_*`` and the flags); when no
checkpoint root is configured it writes the demo and serves ``DIR``, when no save root is
configured it saves into ``DIR/saves``; it prints the URL and three next steps, then replaces
itself with ``python -m megaload serve``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_CHECKPOINT_NAME",
    "DEMO_TOKENIZER_NAME",
    "DEMO_SAVES_NAME",
    "DEMO_SEED",
    "ensure_demo_checkpoint",
    "demo_checkpoint_complete",
    "build_demo_tokenizer",
    "demo_model_provider",
    "next_steps",
    "main",
]

DEMO_CHECKPOINT_NAME = "demo-gpt"
DEMO_TOKENIZER_NAME = "demo-tokenizer"
DEMO_SAVES_NAME = "saves"
DEMO_SEED = 1234
_TOKENIZER_VOCAB = 512
_END_OF_TEXT = "<|endoftext|>"
_TRACKER = "latest_checkpointed_iteration.txt"  # the save directory's marker (a format fact)

# The tokenizer's training text (our own words): enough for a few hundred merges.
_CORPUS = (
    "megaload loads Megatron checkpoints and serves their weights over HTTP.",
    "A checkpoint is a directory: a tracker file names the latest iteration, and each iteration "
    "directory holds the distributed tensors, the common state and the run configuration.",
    "The service keeps loaded models resident, streams their state dict as safetensors shards, "
    "and saves them again as new checkpoints, one job at a time.",
    "Clients ask for a model by path, wait for the load, then download the shards in parallel, "
    "resuming any shard that was cut short and checking every tensor against its checksum.",
    "The quick brown fox jumps over the lazy dog while the model parallel ranks agree on a plan.",
    "Tokens, tensors, layers, heads, embeddings, attention, normalization and the vocabulary are "
    "the words of the trade; the demo model knows none of them, its weights are random.",
    "Hello, world! 0123456789 ([{ }]) <html> key=value path/to/iter_0000100 and so on.",
)


# ------------------------------------------------------------------------------- the parts


def build_demo_tokenizer() -> Any:
    """The demo's byte-level BPE tokenizer (a ``tokenizers.Tokenizer``), trained on a fixed
    text: the same vocabulary and merges on every run."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        special_tokens=[_END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tokenizer


def demo_model_provider(vocab_size: int) -> Any:
    """The demo GPT's :class:`~megaload.checkpoint.GPTModelProvider` for a tokenizer of
    ``vocab_size`` entries (the embedding is padded to a multiple of 128)."""
    import torch

    from .checkpoint import GPTModelProvider

    return GPTModelProvider(
        num_layers=4,
        hidden_size=128,
        ffn_hidden_size=512,
        num_attention_heads=4,
        seq_length=256,
        vocab_size=vocab_size,
        should_pad_vocab=True,
        make_vocab_size_divisible_by=128,
        position_embedding_type="rope",
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        share_embeddings_and_output_weights=True,
        init_method_std=0.02,
        params_dtype=torch.float32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


def demo_checkpoint_complete(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` already holds the published demo checkpoint and tokenizer."""
    root = Path(data_dir)
    return (root / DEMO_CHECKPOINT_NAME / _TRACKER).is_file() and (root / DEMO_TOKENIZER_NAME / "tokenizer.json").is_file()


def _publish_dir(staging: Path, final: Path) -> None:
    """Rename the finished ``staging`` directory to ``final``; if another process published
    first, keep theirs and drop ours."""
    try:
        os.rename(staging, final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():
            raise


def _ensure_tokenizer(root: Path) -> Path:
    final = root / DEMO_TOKENIZER_NAME
    if (final / "tokenizer.json").is_file():
        return final
    from transformers import PreTrainedTokenizerFast

    staging = root / f".{DEMO_TOKENIZER_NAME}.partial-{uuid.uuid4().hex[:12]}"
    try:
        wrapped = PreTrainedTokenizerFast(
            tokenizer_object=build_demo_tokenizer(),
            bos_token=_END_OF_TEXT,
            eos_token=_END_OF_TEXT,
            model_max_length=256,
        )
        wrapped.save_pretrained(str(staging))
        _publish_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_demo_checkpoint(data_dir: str | os.PathLike) -> Path:
    """The demo checkpoint's save directory under ``data_dir``, written first if missing.

    Idempotent (an existing complete demo is returned untouched, cheaply) and atomic (both the
    tokenizer and the checkpoint appear by one rename each). Creates ``data_dir`` if needed.
    Must run where no torch.distributed default group exists (it uses a temporary one);
    raises :class:`~megaload.checkpoint.DistributedContextError` otherwise.
    """
    root = Path(os.fspath(data_dir)).expanduser().absolute()
    target = root / DEMO_CHECKPOINT_NAME
    if demo_checkpoint_complete(root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = _ensure_tokenizer(root)
    if (target / _TRACKER).is_file():
        return target

    import torch

    from .checkpoint import (
        CheckpointExistsError,
        megatron_cpu_init_context,
        save_megatron_model,
        temporary_distributed_context,
    )

    vocab_size = len(_load_hf_tokenizer(tokenizer_dir))
    provider = demo_model_provider(vocab_size)
    with temporary_distributed_context("gloo"):
        with megatron_cpu_init_context(provider):
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(DEMO_SEED)
                model = provider.provide()
        try:
            save_megatron_model([model], target, hf_tokenizer_path=tokenizer_dir)
        except CheckpointExistsError:
            if not (target / _TRACKER).is_file():  # something else is in the way
                raise
    return target


def _load_hf_tokenizer(directory: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


# ------------------------------------------------------------------------------ next steps


def next_steps(url: str, checkpoint: str | None, *, token: bool = False) -> str:
    """Three copy-pasteable ways to reach a loaded model at ``url``: curl, the client CLI
    and Python. ``checkpoint`` is the path to load (None: a placeholder to fill in)."""
    ckpt = checkpoint if checkpoint is not None else "/path/inside/a/checkpoint/root"
    auth = ' -H "Authorization: Bearer $MEGALOAD_TOKEN"' if token else ""
    note = "  (the client reads the token from $MEGALOAD_TOKEN)\n" if token else ""
    python = (
        "from megaload_client import Client; "
        f"m = Client('{url}').load('{ckpt}'); "
        "sd = m.state_dict(); print(len(sd), 'tensors', sum(t.numel() for t in sd.values()), 'values')"
    )
    return (
        f"megaload is starting on {url}  (ready when {url}/readyz answers 200; Ctrl-C stops it)\n"
        f"{note}"
        "Next steps, from another shell in this directory:\n"
        "  1. curl: load the checkpoint\n"
        f"     curl -s{auth} -X POST {url}/v1/models -H 'Content-Type: application/json' "
        f"-d '{{\"checkpoint_path\": \"{ckpt}\"}}'\n"
        "  2. the client CLI: load it, then download its state dict as safetensors (into a new temporary directory)\n"
        f"     .venv/bin/megaload-client --url {url} load {ckpt}\n"
        f"     .venv/bin/megaload-client --url {url} ls\n"
        f'     .venv/bin/megaload-client --url {url} download MODEL_ID "$(mktemp -d)"\n'
        "  3. Python: stream the state dict into tensors\n"
        f'     .venv/bin/python -c "{python}"\n'
    )


# ------------------------------------------------------------------------------ command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megaload.demo",
        description="Write the embedded demo checkpoint; with --serve, start the service on it (make run).",
    )
    parser.add_argument("--data-dir", default="data", metavar="DIR",
                        help="where the demo checkpoint and the demo save root live (default ./data)")
    parser.add_argument("--serve", action="store_true",
                        help="then run `megaload serve` with the remaining flags (what `make run` does)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args, rest = parser.parse_known_args(argv)
    # megatron-core warns at import about optional accelerators (Apex, Transformer Engine)
    # that a CPU demo does not use; the service logs its own view of the device.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    if not args.serve:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(ensure_demo_checkpoint(args.data_dir))
        return 0
    return _serve(Path(args.data_dir), list(rest))


def _serve(data_dir: Path, serve_flags: list[str]) -> int:
    from .__main__ import build_parser, settings_from_args, url_host

    serve_args = build_parser().parse_args(["serve", *serve_flags])
    settings = settings_from_args(serve_args)  # MEGALOAD_* and flags, as `megaload serve` reads them
    added: list[str] = []
    checkpoint: str | None = None
    if "checkpoint_roots" not in settings.model_fields_set:
        if not demo_checkpoint_complete(data_dir):
            print(f"megaload: writing the demo checkpoint into {data_dir}/ (first start only) ...", flush=True)
        ensure_demo_checkpoint(data_dir)
        added += ["--checkpoint-root", str(data_dir.absolute())]
        checkpoint = DEMO_CHECKPOINT_NAME
    if "save_roots" not in settings.model_fields_set:
        saves = data_dir / DEMO_SAVES_NAME
        saves.mkdir(parents=True, exist_ok=True)
        added += ["--save-root", str(saves.absolute())]
    if settings.port == 0:
        url = f"http://{url_host(settings.host)}:PORT"
    else:
        url = f"http://{url_host(settings.host)}:{settings.port}"
    print(next_steps(url, checkpoint, token=settings.token is not None), flush=True)
    command = [sys.executable, "-m", "megaload", "serve", *serve_flags, *added]
    os.execv(sys.executable, command)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main())
