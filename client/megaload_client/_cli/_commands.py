"""The ``megaload-client`` commands: each one SDK call (or a few), its answer printed.

:func:`run_command` runs the command the parsed arguments name, with one :class:`Client`, and
returns its exit status; errors propagate to :func:`~megaload_client._cli.main`, which
reports them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from typing import Any

from .._client import Client
from .._exceptions import JobError
from ..sizes import format_size
from ..types import JobState
from ._errors import UsageError
from ._output import (
    Output,
    format_rows,
    format_shape,
    index_text,
    job_line,
    model_line,
    model_text,
    summarize_keys,
)

__all__ = ["run_command"]


def _tensor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the SDK's tensor calls these flags ask for."""
    if (args.tp_rank is None) != (args.tp_size is None):
        raise UsageError("--tp-rank and --tp-size go together")
    options: dict[str, Any] = {"dtype": args.dtype, "keys": args.keys, "max_shard_bytes": args.max_shard_bytes,
                               "names": args.names}
    if args.tp_size is not None:
        if args.tp_rank >= args.tp_size:
            raise UsageError(f"--tp-rank {args.tp_rank} must be below --tp-size {args.tp_size}")
        options.update(tp_rank=args.tp_rank, tp_size=args.tp_size)
    return options


def _progress_wanted(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress``, else on when stdout and stderr are terminals and tqdm imports."""
    if args.progress is not None:
        return bool(args.progress)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        return False
    return importlib.util.find_spec("tqdm") is not None


# ---------------------------------------------------------------------- commands


def _info(args: argparse.Namespace, client: Client, out: Output) -> int:
    info = client.info()
    ready = client.ready()
    mem = info.memory
    text = "\n".join([
        f"megaload {info.version} at {client.base_url}  ({ready.status})",
        f"backend {info.backend}, device {info.device}, world size {info.world_size}",
        f"memory  {format_size(mem.used_bytes)} used of {format_size(mem.budget_bytes)}, "
        f"{format_size(mem.available_bytes)} free",
        f"models  {info.models} resident",
        "checkpoint roots  " + (", ".join(info.checkpoint_roots) or "-"),
        "save roots        " + (", ".join(info.save_roots) or "- (saving disabled)"),
    ])
    out.emit(info, text)
    return 0


def _config(args: argparse.Namespace, client: Client, out: Output) -> int:
    config = client.checkpoint_config(args.path)
    head = format_rows([
        ("path", config.path), ("iteration dir", config.iteration_dir), ("iteration", config.iteration),
        ("format", config.format), ("model type", config.model_type), ("config type", config.config_type),
    ])
    body = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in sorted(config.config.items()))
    extra = f"\n{len(config.mlm_args)} Megatron-LM args (--json shows them)" if config.mlm_args else ""
    out.emit(config, f"{head}\nconfig:\n{body}{extra}")
    return 0


def _tensors(args: argparse.Namespace, client: Client, out: Output) -> int:
    listing = client.checkpoint_tensors(args.path)
    lines = [f"{t.name}  {t.dtype}  {format_shape(t.shape)}  {format_size(t.size_bytes)}" for t in listing.tensors]
    lines.append(f"{listing.tensor_count} tensors, {format_size(listing.total_bytes)} in {listing.iteration_dir}")
    out.emit(listing, "\n".join(lines))
    return 0


def _tokenizer(args: argparse.Namespace, client: Client, out: Output) -> int:
    tok = client.checkpoint_tokenizer(args.path)
    specials = ", ".join(f"{k}={v}" for k, v in tok.special_ids.items()) or "-"
    out.emit(tok, format_rows([
        ("path", tok.path), ("iteration dir", tok.iteration_dir), ("type", tok.tokenizer_type),
        ("vocab size", tok.vocab_size), ("special ids", specials),
    ]))
    return 0


def _tokenize(args: argparse.Namespace, client: Client, out: Output) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    answer = client.tokenize(args.path, text, detokenize=not args.no_detokenize)
    lines = [f"{answer.count} tokens", " ".join(str(i) for i in answer.ids)]
    if answer.detokenized is not None:
        lines.append(f"detokenized: {answer.detokenized!r}")
    out.emit(answer, "\n".join(lines))
    return 0


def _load(args: argparse.Namespace, client: Client, out: Output) -> int:
    options = dict(model_type=args.model_type, dtype=args.dtype, mp_overrides=dict(args.mp) or None, pin=args.pin)
    job = client.start_load(args.path, **options)
    if args.no_wait:
        out.emit(job.job, job_line(job.job), quiet=job.id if args.quiet else None)
    else:
        # The bar shows the load's phase (estimating, waiting for memory, loading) and, while it reads
        # the checkpoint, the bytes read; a model already resident answers at once with no job (and no bar).
        job.wait(progress=_progress_wanted(args) and not job.done)
        model = job.model()
        out.emit(model.info, model_text(model.info), quiet=model.id if args.quiet else None)
    return 0


def _ls(args: argparse.Namespace, client: Client, out: Output) -> int:
    models = client.list_models()
    mem = models.memory
    lines = [model_line(m) for m in models.models] or ["no resident models"]
    lines.append(f"memory: {format_size(mem.used_bytes)} used of {format_size(mem.budget_bytes)}")
    out.emit(models, "\n".join(lines), quiet="\n".join(m.id for m in models.models) if args.quiet else None)
    return 0


def _show(args: argparse.Namespace, client: Client, out: Output) -> int:
    model = client.get_model(args.model_id)
    out.emit(model.info, model_text(model.info))
    return 0


def _rm(args: argparse.Namespace, client: Client, out: Output) -> int:
    client.unload(args.model_id)
    out.emit({"unloaded": args.model_id}, f"unloaded {args.model_id}")
    return 0


def _index(args: argparse.Namespace, client: Client, out: Output) -> int:
    options = _tensor_options(args)
    index = client.state_dict_index(args.model_id, **options)
    out.emit(index, index_text(index))
    return 0


def _download(args: argparse.Namespace, client: Client, out: Output) -> int:
    options = _tensor_options(args)
    result = client.download(
        args.model_id, args.directory, max_workers=args.workers, verify=not args.no_verify,
        progress=_progress_wanted(args), **options,
    )
    verified = "sizes and checksums" if result.checksums_verified else "sizes only (no checksums this client can verify)"
    text = (
        f"{len(result.shard_files)} shard(s), {format_size(result.total_bytes)} in {result.directory}\n"
        f"verified: {verified}; reused {len(result.reused)}, resumed {len(result.resumed)}\n"
        f"index: {result.index_file}"
    )
    if result.files:
        text += f"\nalso: {', '.join(p.name for p in result.files)}"
    if result.skipped:
        text += f"\nleft out (not tensors): {summarize_keys(result.skipped)}"
    document = {
        "directory": str(result.directory), "index_file": str(result.index_file),
        "shard_files": [str(p) for p in result.shard_files], "total_bytes": result.total_bytes,
        "downloaded_bytes": result.downloaded_bytes, "reused": result.reused, "resumed": result.resumed,
        "checksums_verified": result.checksums_verified, "skipped": result.skipped,
        "files": [str(p) for p in result.files],
    }
    out.emit(document, text)
    return 0


def _save(args: argparse.Namespace, client: Client, out: Output) -> int:
    job = client.save(args.model_id, args.path, overwrite=args.overwrite, hf_tokenizer_path=args.hf_tokenizer_path)
    if not args.no_wait:
        job.wait(progress=_progress_wanted(args))
    out.emit(job.job, job_line(job.job), quiet=job.id if args.quiet else None)
    return 0


def _jobs(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.job_id is None:
        if args.cancel:
            raise UsageError("--cancel needs a JOB_ID (megaload-client jobs lists them)")
        listing = client.list_jobs()
        if not args.wait:
            out.emit(listing, "\n".join(job_line(j) for j in listing) or "no jobs")
            return 0
        handles = [client.get_job(j.id) for j in listing if j.state in (JobState.QUEUED, JobState.RUNNING)]
        status = 0
        for handle in handles:
            try:
                handle.wait()
            except JobError:  # failed or cancelled: shown in its line, and in the exit status
                status = 1
        waited = [h.job for h in handles]
        out.emit(waited, "\n".join(job_line(j) for j in waited) or "no job queued or running")
        return status
    handle = client.get_job(args.job_id)
    if args.cancel:
        handle.cancel()
    elif args.wait:
        handle.wait()
    out.emit(handle.job, job_line(handle.job))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Client, Output], int]] = {
    "info": _info, "config": _config, "tensors": _tensors, "tokenizer": _tokenizer, "tokenize": _tokenize,
    "load": _load, "ls": _ls, "show": _show, "rm": _rm, "index": _index, "download": _download, "save": _save,
    "jobs": _jobs,
}


def run_command(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Run ``args.command``; its exit status (0, or 1 when ``jobs --wait`` saw a job fail)."""
    return _COMMANDS[args.command](args, client, out)
