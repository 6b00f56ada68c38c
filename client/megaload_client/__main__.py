"""``megaload-client``: the command line of the client SDK.

    megaload-client [--url URL] [--token TOKEN] [--json] COMMAND ...

The URL comes from ``--url``, else ``$MEGALOAD_URL``, else ``http://127.0.0.1:8000``; the
token from ``--token``, else ``$MEGALOAD_TOKEN``. ``--json`` (before or after the command)
prints the service's answer as JSON on standard output instead of text.

Errors print one line (for a service error: its status, title and detail) to standard error;
under ``--json`` they are one JSON document on standard error instead, always of the shape
``{"error": {"type": ..., "status": ..., "title": ..., "detail": ...}}`` (``type`` is the
problem type URI for an error of the service, else one of :data:`ERROR_TYPES`; ``status`` the
HTTP status or null; ``errors``, ``job`` and ``request_id`` are added when known). Exit
status: 0, 1 for an error, 2 for bad arguments, 130 when interrupted, 141 when standard
output is closed early (``| head``), as a program killed by SIGPIPE reports.

Sizes given (``--max-shard-bytes``) take :mod:`megaload_client.sizes`' syntax (``1MiB``,
``500MB``, bytes); sizes printed are binary (``4.2 MiB``). Progress bars (on standard error)
are on by default when standard output and standard error are both terminals and tqdm is
installed; ``--progress`` forces them on, ``--no-progress`` off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from ._client import Client
from ._environment import DEFAULT_URL, TOKEN_ENV, URL_ENV, resolve_url
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    IntegrityError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobTimeoutError,
    MegaloadError,
)
from ._version import __version__
from .sizes import SIZE_SYNTAX, format_size, parse_size
from .types import Job, JobState, ModelInfo, StateDictIndex

__all__ = ["main", "build_parser", "ERROR_TYPES"]

# ``error.type`` of errors that are not the service's problem documents.
ERROR_TYPES = {
    "usage": "the command line was wrong (exit status 2)",
    "invalid-argument": "a value the request refuses before it is sent (exit status 2)",
    "connection": "the service could not be reached, or the connection broke",
    "timeout": "the service took longer than --timeout",
    "integrity": "a downloaded tensor failed its size or checksum check",
    "job-cancelled": "the job waited for was cancelled",
    "job-timeout": "the job waited for did not end in time",
    "bad-response": "the answer could not be read (not a megaload service, or an incompatible version?)",
    "os-error": "a local file or directory could not be read or written",
    "interrupted": "Ctrl-C (exit status 130)",
    "internal": "a bug in megaload-client: please report it",
}
# Request models: a ValidationError of one of these is a bad argument, of anything else a bad answer.
_REQUEST_MODELS = {"LoadModelRequest", "SaveModelRequest", "TokenizeRequest", "ModelParallelOverrides"}
# What the service's messages call its request fields, as this command line spells them.
_HINTS = ((re.compile(r"\bpass overwrite=true\b", re.I), "pass --overwrite"),)
# A request model's refusals in this command line's words (others keep the model's message).
_REASONS = {
    "extra_forbidden": "unknown setting",
}
_EXIT_USAGE, _EXIT_INTERRUPTED, _EXIT_BROKEN_PIPE = 2, 130, 141


class UsageError(Exception):
    """A command line this program refuses (exit status 2)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse raising :class:`UsageError` instead of exiting, so ``--json`` can format it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


# ---------------------------------------------------------------------- argument types


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _index_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _id_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty (was it set from the output of a command that failed?)"
        )
    return text


def _path_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def _mp_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    try:
        return key.strip(), int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: {raw!r} is not an integer or true/false") from None


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print answers as JSON on stdout, and errors as JSON on stderr (before or after COMMAND)",
    )
    progress = _Parser(add_help=False)
    bars = progress.add_mutually_exclusive_group()
    bars.add_argument("--progress", action="store_true", default=None,
                      help="show progress on stderr even when not on a terminal (needs tqdm)")
    bars.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress (default: shown when stdout and stderr are terminals and tqdm is installed)")
    tensors = _Parser(add_help=False)
    tensors.add_argument("--dtype", help="cast tensors on the fly (bf16, fp16, fp32, ...)")
    tensors.add_argument("--keys", action="append", metavar="PREFIX_OR_REGEX",
                         help="keep matching keys: a prefix, or a regular expression (RE2); repeatable")
    tensors.add_argument("--max-shard-bytes", type=_size_arg, metavar="SIZE",
                         help=f"largest shard the service should cut: {SIZE_SYNTAX}, e.g. 1MiB")
    tensors.add_argument("--names", choices=["megatron", "hf"], default="megatron",
                         help="tensor names and layouts: the checkpoint's own (megatron, the default) or the "
                         "Hugging Face model's (hf)")
    tensors.add_argument("--tp-rank", type=_index_arg, metavar="N",
                         help="only tensor-parallel rank N's slice of each tensor (with --tp-size)")
    tensors.add_argument("--tp-size", type=_positive_int, metavar="N",
                         help="the tensor-parallel size the slices are cut for (with --tp-rank)")

    parser = _Parser(
        prog="megaload-client",
        description="Talk to a megaload service: load Megatron checkpoints, stream and save their weights.",
        epilog=f"Environment: {URL_ENV} (default {DEFAULT_URL}), {TOKEN_ENV}. Errors: one line on stderr, or "
        'with --json {"error": {"type", "status", "title", "detail"}} on stderr; exit status 1, 2 for bad '
        "arguments, 130 when interrupted, 141 when stdout closes early.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"megaload-client {__version__}",
                        help="print the version and exit")
    parser.add_argument("--url", help=f"service URL (default: ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="seconds per request (default 60)")
    parser.add_argument("--retries", type=int, default=3, metavar="N",
                        help="retries of idempotent requests (default 3)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *parents: _Parser, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=kw.pop("description", help[0].upper() + help[1:] + "."),
                                   parents=[common, *parents], **kw)

    command("info", "service versions, device, memory, roots and readiness")

    path_help = "checkpoint: a save directory or iteration directory, relative to the first checkpoint root or " \
        "absolute inside one"
    config = command("config", "a checkpoint's model config, read without loading it")
    config.add_argument("path", metavar="PATH", type=_path_arg, help=path_help)
    listing = command("tensors", "a checkpoint's tensor names, shapes and dtypes, from its metadata (no weights read)")
    listing.add_argument("path", metavar="PATH", type=_path_arg, help=path_help)
    tokenizer = command("tokenizer", "a checkpoint's tokenizer: type, vocabulary size, special tokens")
    tokenizer.add_argument("path", metavar="PATH", type=_path_arg, help=path_help)
    tokenize = command("tokenize", "tokenize text with a checkpoint's tokenizer")
    tokenize.add_argument("path", metavar="PATH", type=_path_arg, help=path_help)
    tokenize.add_argument("text", metavar="TEXT", help="text to tokenize ('-' reads standard input)")
    tokenize.add_argument("--no-detokenize", action="store_true", help="do not decode the ids back")

    load = command("load", "load a checkpoint (or find it resident); shows the load's phase and elapsed time",
                   progress)
    load.add_argument("path", metavar="PATH", type=_path_arg, help=path_help)
    load.add_argument("--model-type", choices=["gpt", "mamba"], help="needed for Megatron-LM checkpoints")
    load.add_argument("--dtype", help="cast parameters after loading (bf16, fp16, fp32, ...)")
    load.add_argument("--pin", action="store_true", help="never evict this model to make room")
    load.add_argument("--mp", type=_mp_value, action="append", default=[], metavar="KEY=VALUE",
                      help="model-parallel override, e.g. tensor_model_parallel_size=1 (repeatable)")
    load.add_argument("--no-wait", action="store_true", help="start a load job and print it")
    load.add_argument("-q", "--quiet", action="store_true",
                      help="print only the model's id (with --no-wait: the job's, none when the model was resident already), "
                      "e.g. MODEL=$(megaload-client load -q PATH)")

    ls = command("ls", "list resident models and memory use")
    ls.add_argument("-q", "--quiet", action="store_true", help="print only the models' ids, one a line")
    model_help = "id of a resident model (megaload-client ls lists them)"
    show = command("show", "show one resident model")
    show.add_argument("model_id", metavar="MODEL_ID", type=_id_arg, help=model_help)
    rm = command("rm", "unload a model (after its active streams finish)")
    rm.add_argument("model_id", metavar="MODEL_ID", type=_id_arg, help=model_help)

    index = command("index", "a resident model's state-dict index: its tensors and the shards they stream in",
                    tensors)
    index.add_argument("model_id", metavar="MODEL_ID", type=_id_arg, help=model_help)
    download = command("download", "download a state dict as sharded safetensors + index", tensors, progress)
    download.add_argument("model_id", metavar="MODEL_ID", type=_id_arg, help=model_help)
    download.add_argument("directory", metavar="DIRECTORY", type=_path_arg,
                          help="local directory to write (created if missing; finished shards in it are reused, "
                          "partial ones resumed)")
    download.add_argument(
        "--hf", dest="names", action="store_const", const="hf", default="megatron",
        help="short for --names hf: the Hugging Face model, with its config.json and tokenizer files, a "
        "directory from_pretrained reads",
    )
    download.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                          help="shards fetched in parallel (default 4)")
    download.add_argument("--no-verify", action="store_true", help="skip per-tensor checksums")

    save = command("save", "save a resident model as a Megatron checkpoint", progress)
    save.add_argument("model_id", metavar="MODEL_ID", type=_id_arg, help=model_help)
    save.add_argument("path", metavar="PATH", type=_path_arg,
                      help="destination save directory, relative to the first save root or absolute inside one")
    save.add_argument("--overwrite", action="store_true", help="replace a checkpoint already there")
    save.add_argument("--hf-tokenizer-path", metavar="DIR", help="tokenizer directory to bundle")
    save.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    save.add_argument("-q", "--quiet", action="store_true",
                      help="print only the job's id, e.g. JOB=$(megaload-client save -q --no-wait MODEL_ID PATH)")

    jobs = command(
        "jobs", "list jobs, or show, wait for or cancel one",
        description="List jobs; with JOB_ID, show that job; --wait waits for it to end (without JOB_ID: for "
        "every job queued or running now), --cancel cancels it while queued.",
    )
    jobs.add_argument("job_id", metavar="JOB_ID", nargs="?", type=_id_arg,
                      help="a job id, as load --no-wait and save --no-wait print it")
    action = jobs.add_mutually_exclusive_group()
    action.add_argument("--cancel", action="store_true", help="cancel the (queued) job JOB_ID")
    action.add_argument("--wait", action="store_true",
                        help="wait until JOB_ID ends (without JOB_ID: every job queued or running now); "
                        "exit status 1 if one failed")
    return parser


# ---------------------------------------------------------------------- output


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, value: Any, text: str, *, quiet: str | None = None) -> None:
        """``value`` as JSON under ``--json``, else ``text``; ``quiet`` (ids) instead of both when given."""
        if quiet is not None:
            if quiet:
                print(quiet)
        elif self.as_json:
            print(json.dumps(_jsonable(value), indent=2, sort_keys=False))
        else:
            print(text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _hint(text: str) -> str:
    """The service's words for its request fields, as this command line's flags."""
    for pattern, flag in _HINTS:
        text = pattern.sub(flag, text)
    return text


def _model_line(m: ModelInfo) -> str:
    pin = " pinned" if m.pinned else ""
    return f"{m.id}  {m.dtype:<9} {format_size(m.size_bytes):>10}  {m.parameter_count:>14,} params{pin}  {m.iteration_dir}"


def _model_text(m: ModelInfo) -> str:
    rows = [
        ("id", m.id), ("checkpoint", m.checkpoint_path), ("iteration dir", m.iteration_dir),
        ("iteration", m.iteration), ("format", m.format), ("model type", m.model_type), ("dtype", m.dtype),
        ("parameters", f"{m.parameter_count:,}"), ("size", format_size(m.size_bytes)), ("pinned", m.pinned),
        ("loaded at", m.loaded_at.isoformat()), ("last used", m.last_used_at.isoformat()),
        ("load seconds", f"{m.load_seconds:.2f}"), ("active streams", m.active_leases),
    ]
    return _rows(rows)


def _rows(rows: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(f"{k:<15} {v}" for k, v in rows if v is not None)


def _job_line(j: Job) -> str:
    what = j.target or j.model_id or ""
    phase = f" ({j.phase})" if j.phase and j.state.value == "running" else ""
    line = f"{j.id}  {j.kind.value:<4} {j.state.value:<9} {j.progress:>4.0%}{phase}  {what}"
    if j.error is not None:
        line += f"\n    error: {j.error.title}" + (f": {_hint(j.error.detail)}" if j.error.detail else "")
    return line


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def summarize_keys(keys: Sequence[str], *, show: int = 3) -> str:
    """``keys`` in one short line: how many, their common last part, the first few.

    ``17 entries (*._extra_state): a, b, c and 14 more``; all of them when ``show`` or fewer.
    """
    if not keys:
        return "none"
    tails = {key.rsplit(".", 1)[-1] for key in keys}
    pattern = f" (*.{next(iter(tails))})" if len(tails) == 1 and len(keys) > 1 else ""
    shown = ", ".join(keys[:show])
    more = f" and {len(keys) - show} more (--json lists them all)" if len(keys) > show else ""
    return f"{len(keys)} {'entry' if len(keys) == 1 else 'entries'}{pattern}: {shown}{more}"


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


def _index_text(index: StateDictIndex) -> str:
    lines = []
    for name, tensor in index.tensors.items():
        lines.append(f"{name}  {tensor.dtype}  {_shape(tensor.shape)}  shard {tensor.shard}")
    if not index.tensors:  # an older service: names only
        lines.extend(f"{name}  {shard}" for name, shard in index.weight_map.items())
    for shard in index.shards:
        lines.append(f"shard {shard.index}: {shard.filename}  {format_size(shard.size)}, {shard.tensor_count} tensors")
    lines.append(f"{len(index.weight_map)} tensors, {format_size(index.total_size)} in {len(index.shards)} shard(s)")
    if index.skipped:
        lines.append(f"left out (not tensors): {summarize_keys(index.skipped)}")
    return "\n".join(lines)


def _progress_wanted(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress``, else on when stdout and stderr are terminals and tqdm imports."""
    if args.progress is not None:
        return bool(args.progress)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        return False
    return importlib.util.find_spec("tqdm") is not None


# ---------------------------------------------------------------------- commands


def _run(args: argparse.Namespace, client: Client, out: _Out) -> int:
    command = args.command
    if command == "info":
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
    elif command == "config":
        config = client.checkpoint_config(args.path)
        head = _rows([
            ("path", config.path), ("iteration dir", config.iteration_dir), ("iteration", config.iteration),
            ("format", config.format), ("model type", config.model_type), ("config type", config.config_type),
        ])
        body = "\n".join(f"  {k} = {json.dumps(v)}" for k, v in sorted(config.config.items()))
        extra = f"\n{len(config.mlm_args)} Megatron-LM args (--json shows them)" if config.mlm_args else ""
        out.emit(config, f"{head}\nconfig:\n{body}{extra}")
    elif command == "tensors":
        listing = client.checkpoint_tensors(args.path)
        lines = [f"{t.name}  {t.dtype}  {_shape(t.shape)}  {format_size(t.size_bytes)}" for t in listing.tensors]
        lines.append(f"{listing.tensor_count} tensors, {format_size(listing.total_bytes)} in {listing.iteration_dir}")
        out.emit(listing, "\n".join(lines))
    elif command == "tokenizer":
        tok = client.checkpoint_tokenizer(args.path)
        specials = ", ".join(f"{k}={v}" for k, v in tok.special_ids.items()) or "-"
        out.emit(tok, _rows([
            ("path", tok.path), ("iteration dir", tok.iteration_dir), ("type", tok.tokenizer_type),
            ("vocab size", tok.vocab_size), ("special ids", specials),
        ]))
    elif command == "tokenize":
        text = sys.stdin.read() if args.text == "-" else args.text
        answer = client.tokenize(args.path, text, detokenize=not args.no_detokenize)
        lines = [f"{answer.count} tokens", " ".join(str(i) for i in answer.ids)]
        if answer.detokenized is not None:
            lines.append(f"detokenized: {answer.detokenized!r}")
        out.emit(answer, "\n".join(lines))
    elif command == "load":
        options = dict(model_type=args.model_type, dtype=args.dtype, mp_overrides=dict(args.mp) or None, pin=args.pin)
        job = client.start_load(args.path, **options)
        if args.no_wait:
            out.emit(job.job, _job_line(job.job), quiet=job.id if args.quiet else None)
        else:
            # The service reports a load's phase (estimating, waiting for memory, loading), not bytes read;
            # a model already resident answers at once with no job (and no bar).
            job.wait(progress=_progress_wanted(args) and not job.done)
            model = job.model()
            out.emit(model.info, _model_text(model.info), quiet=model.id if args.quiet else None)
    elif command == "ls":
        models = client.list_models()
        mem = models.memory
        lines = [_model_line(m) for m in models.models] or ["no resident models"]
        lines.append(f"memory: {format_size(mem.used_bytes)} used of {format_size(mem.budget_bytes)}")
        out.emit(models, "\n".join(lines), quiet="\n".join(m.id for m in models.models) if args.quiet else None)
    elif command == "show":
        model = client.get_model(args.model_id)
        out.emit(model.info, _model_text(model.info))
    elif command == "rm":
        client.unload(args.model_id)
        out.emit({"unloaded": args.model_id}, f"unloaded {args.model_id}")
    elif command == "index":
        options = _tensor_options(args)
        index = client.state_dict_index(args.model_id, **options)
        out.emit(index, _index_text(index))
    elif command == "download":
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
    elif command == "save":
        job = client.save(args.model_id, args.path, overwrite=args.overwrite, hf_tokenizer_path=args.hf_tokenizer_path)
        if not args.no_wait:
            job.wait(progress=_progress_wanted(args))
        out.emit(job.job, _job_line(job.job), quiet=job.id if args.quiet else None)
    elif command == "jobs":
        return _jobs(args, client, out)
    return 0


def _jobs(args: argparse.Namespace, client: Client, out: _Out) -> int:
    if args.job_id is None:
        if args.cancel:
            raise UsageError("--cancel needs a JOB_ID (megaload-client jobs lists them)")
        listing = client.list_jobs()
        if not args.wait:
            out.emit(listing, "\n".join(_job_line(j) for j in listing) or "no jobs")
            return 0
        handles = [client.get_job(j.id) for j in listing if j.state in (JobState.QUEUED, JobState.RUNNING)]
        status = 0
        for handle in handles:
            try:
                handle.wait()
            except JobError:  # failed or cancelled: shown in its line, and in the exit status
                status = 1
        waited = [h.job for h in handles]
        out.emit(waited, "\n".join(_job_line(j) for j in waited) or "no job queued or running")
        return status
    handle = client.get_job(args.job_id)
    if args.cancel:
        handle.cancel()
    elif args.wait:
        handle.wait()
    out.emit(handle.job, _job_line(handle.job))
    return 0


# ---------------------------------------------------------------------- errors


def _error(error: BaseException) -> tuple[int, dict[str, Any]]:
    """(exit status, the ``error`` document) for anything ``main`` catches."""
    def doc(type_: str, detail: str | None, *, title: str | None = None, status: int | None = None,
            **extra: Any) -> dict[str, Any]:
        body = {"type": type_, "status": status, "title": title or ERROR_TYPES.get(type_, type_),
                "detail": detail}
        body.update({k: v for k, v in extra.items() if v is not None})
        return body

    if isinstance(error, UsageError):
        return _EXIT_USAGE, doc("usage", str(error), title="invalid command line")
    if isinstance(error, APIStatusError):
        problem = error.problem
        errors = [{"loc": list(item.loc), "msg": item.msg} for item in problem.errors or []] or None
        return 1, doc(problem.type, _hint(problem.detail) if problem.detail else None, title=problem.title,
                      status=problem.status, errors=errors, request_id=error.request_id)
    if isinstance(error, JobError):
        job = error.job
        if isinstance(error, JobFailedError) and job.error is not None:
            problem = job.error
            return 1, doc(problem.type, _hint(problem.detail) if problem.detail else None, title=problem.title,
                          status=problem.status, job=job.id)
        kind = "job-cancelled" if isinstance(error, JobCancelledError) else (
            "job-timeout" if isinstance(error, JobTimeoutError) else "job-failed")
        return 1, doc(kind, str(error), title=f"{job.kind.value} job {job.id} {job.state.value}", job=job.id)
    if isinstance(error, APITimeoutError):
        return 1, doc("timeout", str(error))
    if isinstance(error, APIConnectionError):
        return 1, doc("connection", str(error))
    if isinstance(error, IntegrityError):
        return 1, doc("integrity", str(error))
    if isinstance(error, MegaloadError):
        return 1, doc("internal", str(error), title="error")
    if isinstance(error, ValidationError):
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {_REASONS.get(e['type'], e['msg'])}"
            for e in error.errors(include_url=False)
        )
        if error.title in _REQUEST_MODELS:
            return _EXIT_USAGE, doc("invalid-argument", reasons, title="invalid argument")
        return 1, doc("bad-response", f"it is not a valid {error.title} (is --url a megaload service, of a "
                      "compatible version?)", title="the service's answer could not be read")
    if isinstance(error, ValueError):  # arguments the SDK refuses before sending
        return _EXIT_USAGE, doc("invalid-argument", str(error), title="invalid argument")
    if isinstance(error, OSError):  # e.g. the download directory cannot be written
        return 1, doc("os-error", str(error), title="local file error")
    if isinstance(error, KeyboardInterrupt):
        return _EXIT_INTERRUPTED, doc("interrupted", None, title="interrupted")
    return 1, doc("internal", f"{type(error).__name__}: {error}", title="internal error (please report)")


def _error_text(body: dict[str, Any]) -> str:
    if body["type"] == "usage":
        return f"error: {body['detail']}"
    if body["type"] == "interrupted":
        return "interrupted"
    if body["status"] is not None:
        text = f"error: {body['status']} {body['title']}"
    elif body["type"] in ("invalid-argument",):
        text = "invalid argument"
    elif body["type"] in ("connection", "timeout", "integrity", "os-error", "job-cancelled", "job-timeout"):
        text = "error"  # the detail says it all
    else:
        text = f"error: {body['title']}"
    if body.get("job"):
        text += f" (job {body['job']})"
    if body["detail"]:
        text += f": {body['detail']}"
    for item in body.get("errors") or []:
        where = ".".join(str(part) for part in item["loc"])
        text += f"\n  {where}: {item['msg']}"
    return text


def _report(error: BaseException, as_json: bool) -> int:
    status, body = _error(error)
    if as_json:
        print(json.dumps({"error": body}), file=sys.stderr)
    else:
        if isinstance(error, UsageError) and error.parser is not None:
            print(error.parser.format_usage().rstrip(), file=sys.stderr)
        prog = error.parser.prog if isinstance(error, UsageError) and error.parser is not None else "megaload-client"
        print(f"{prog}: {_error_text(body)}", file=sys.stderr)
    return status


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` among the arguments (before any ``--``): for errors met while parsing them."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(arguments)
    try:
        try:
            args = build_parser().parse_args(arguments)
            as_json = getattr(args, "json", False)
            with Client(resolve_url(args.url), token=args.token, timeout=args.timeout,
                        max_retries=args.retries) as client:
                status = _run(args, client, _Out(as_json))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return status
        except BrokenPipeError:
            raise
        except (Exception, KeyboardInterrupt) as error:
            return _report(error, as_json)
    except BrokenPipeError:
        # stdout was closed early (| head): exit quietly, as a program killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
