"""``megaload-client``: the command line of the client SDK.

    megaload-client [--url URL] [--token TOKEN] [--json] COMMAND ...

The URL comes from ``--url``, else ``$MEGALOAD_URL``, else ``http://127.0.0.1:8000``; the
token from ``--token``, else ``$MEGALOAD_TOKEN``. ``--json`` prints the service's answer as
JSON instead of text. Errors print one line (the problem's status, title and detail) to
stderr and exit with status 1 (2 for bad arguments, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from ._client import Client
from ._environment import DEFAULT_URL, TOKEN_ENV, URL_ENV, resolve_url
from ._exceptions import APIStatusError, MegaloadError
from .types import Job, ModelInfo

__all__ = ["main", "build_parser"]


def _size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megaload-client",
        description="Talk to a megaload service: load Megatron checkpoints, stream and save their weights.",
        epilog=f"Environment: {URL_ENV} (default {DEFAULT_URL}), {TOKEN_ENV}.",
    )
    parser.add_argument("--url", help=f"service URL (default: ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print answers as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--retries", type=int, default=3, help="retries of idempotent requests (default 3)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("info", help="service versions, device, memory, roots and readiness")

    load = commands.add_parser("load", help="load a checkpoint (or find it resident)")
    load.add_argument("path", help="checkpoint save directory or iteration directory")
    load.add_argument("--model-type", choices=["gpt", "mamba"], help="needed for Megatron-LM checkpoints")
    load.add_argument("--dtype", help="cast parameters after loading (bf16, fp16, fp32, ...)")
    load.add_argument("--pin", action="store_true", help="never evict this model to make room")
    load.add_argument("--mp", type=_mp_value, action="append", default=[], metavar="KEY=VALUE",
                      help="model-parallel override, e.g. tensor_model_parallel_size=1 (repeatable)")
    load.add_argument("--no-wait", action="store_true", help="start a load job and print it")

    commands.add_parser("ls", help="list resident models and memory use")
    show = commands.add_parser("show", help="show one resident model")
    show.add_argument("model_id")
    rm = commands.add_parser("rm", help="unload a model (after its active streams finish)")
    rm.add_argument("model_id")

    download = commands.add_parser("download", help="download a state dict as sharded safetensors + index")
    download.add_argument("model_id")
    download.add_argument("directory")
    download.add_argument("--dtype", help="cast tensors on the fly")
    download.add_argument("--keys", action="append", metavar="PREFIX_OR_REGEX", help="keep matching keys (repeatable)")
    download.add_argument("--max-shard-bytes", type=int, help="largest shard file the service should cut")
    download.add_argument(
        "--hf",
        action="store_true",
        help="the Hugging Face model (HF names and layouts, config.json, tokenizer files): a directory "
        "from_pretrained reads",
    )
    download.add_argument("--workers", type=int, default=4, help="shards fetched in parallel (default 4)")
    download.add_argument("--no-verify", action="store_true", help="skip per-tensor checksums")
    download.add_argument("--progress", action="store_true", help="show a progress bar (needs tqdm)")

    save = commands.add_parser("save", help="save a resident model as a Megatron checkpoint")
    save.add_argument("model_id")
    save.add_argument("path", help="destination save directory inside a save root")
    save.add_argument("--overwrite", action="store_true", help="replace a checkpoint already there")
    save.add_argument("--hf-tokenizer-path", help="tokenizer directory to bundle")
    save.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    save.add_argument("--progress", action="store_true", help="show a progress bar while waiting (needs tqdm)")

    jobs = commands.add_parser("jobs", help="list jobs, or show/wait for/cancel one")
    jobs.add_argument("job_id", nargs="?")
    action = jobs.add_mutually_exclusive_group()
    action.add_argument("--cancel", action="store_true", help="cancel the (queued) job")
    action.add_argument("--wait", action="store_true", help="wait until the job ends")

    tokenize = commands.add_parser("tokenize", help="tokenize text with a checkpoint's tokenizer")
    tokenize.add_argument("path", help="checkpoint directory")
    tokenize.add_argument("text", help="text to tokenize ('-' reads standard input)")
    tokenize.add_argument("--no-detokenize", action="store_true", help="do not decode the ids back")
    return parser


# ---------------------------------------------------------------------- output


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, value: Any, text: str) -> None:
        if self.as_json:
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


def _model_line(m: ModelInfo) -> str:
    pin = " pinned" if m.pinned else ""
    return f"{m.id}  {m.dtype:<9} {_size(m.size_bytes):>10}  {m.parameter_count:>14,} params{pin}  {m.iteration_dir}"


def _model_text(m: ModelInfo) -> str:
    rows = [
        ("id", m.id), ("checkpoint", m.checkpoint_path), ("iteration dir", m.iteration_dir),
        ("iteration", m.iteration), ("format", m.format), ("model type", m.model_type), ("dtype", m.dtype),
        ("parameters", f"{m.parameter_count:,}"), ("size", _size(m.size_bytes)), ("pinned", m.pinned),
        ("loaded at", m.loaded_at.isoformat()), ("last used", m.last_used_at.isoformat()),
        ("load seconds", f"{m.load_seconds:.2f}"), ("active streams", m.active_leases),
    ]
    return "\n".join(f"{k:<15} {v}" for k, v in rows if v is not None)


def _job_line(j: Job) -> str:
    what = j.target or j.model_id or ""
    phase = f" ({j.phase})" if j.phase and j.state.value == "running" else ""
    line = f"{j.id}  {j.kind.value:<4} {j.state.value:<9} {j.progress:>4.0%}{phase}  {what}"
    if j.error is not None:
        line += f"\n    error: {j.error.title}" + (f": {j.error.detail}" if j.error.detail else "")
    return line


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
            f"memory  {_size(mem.used_bytes)} used of {_size(mem.budget_bytes)}, {_size(mem.available_bytes)} free",
            f"models  {info.models} resident",
            "checkpoint roots  " + (", ".join(info.checkpoint_roots) or "-"),
            "save roots        " + (", ".join(info.save_roots) or "- (saving disabled)"),
        ])
        out.emit(info, text)
    elif command == "load":
        options = dict(model_type=args.model_type, dtype=args.dtype, mp_overrides=dict(args.mp) or None, pin=args.pin)
        if args.no_wait:
            job = client.start_load(args.path, **options)
            out.emit(job.job, _job_line(job.job))
        else:
            model = client.load(args.path, **options)
            out.emit(model.info, _model_text(model.info))
    elif command == "ls":
        listing = client.list_models()
        mem = listing.memory
        lines = [_model_line(m) for m in listing.models] or ["no resident models"]
        lines.append(f"memory: {_size(mem.used_bytes)} used of {_size(mem.budget_bytes)}")
        out.emit(listing, "\n".join(lines))
    elif command == "show":
        model = client.get_model(args.model_id)
        out.emit(model.info, _model_text(model.info))
    elif command == "rm":
        client.unload(args.model_id)
        out.emit({"unloaded": args.model_id}, f"unloaded {args.model_id}")
    elif command == "download":
        result = client.download(
            args.model_id, args.directory, dtype=args.dtype, keys=args.keys, max_shard_bytes=args.max_shard_bytes,
            names="hf" if args.hf else "megatron", max_workers=args.workers, verify=not args.no_verify,
            progress=args.progress,
        )
        verified = "sizes and checksums" if result.checksums_verified else "sizes only (no checksums this client can verify)"
        text = (
            f"{len(result.shard_files)} shard(s), {_size(result.total_bytes)} in {result.directory}\n"
            f"verified: {verified}; reused {len(result.reused)}, resumed {len(result.resumed)}\n"
            f"index: {result.index_file}"
        )
        if result.files:
            text += f"\nalso: {', '.join(p.name for p in result.files)}"
        if result.skipped:
            text += f"\nleft out (not tensors): {', '.join(result.skipped)}"
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
            job.wait(progress=args.progress)
        out.emit(job.job, _job_line(job.job))
    elif command == "jobs":
        if args.job_id is None:
            listing = client.list_jobs()
            out.emit(listing, "\n".join(_job_line(j) for j in listing) or "no jobs")
        else:
            handle = client.get_job(args.job_id)
            if args.cancel:
                handle.cancel()
            elif args.wait:
                handle.wait()
            out.emit(handle.job, _job_line(handle.job))
    elif command == "tokenize":
        text = sys.stdin.read() if args.text == "-" else args.text
        answer = client.tokenize(args.path, text, detokenize=not args.no_detokenize)
        lines = [f"{answer.count} tokens", " ".join(str(i) for i in answer.ids)]
        if answer.detokenized is not None:
            lines.append(f"detokenized: {answer.detokenized!r}")
        out.emit(answer, "\n".join(lines))
    return 0


def _describe(error: BaseException) -> str:
    if isinstance(error, APIStatusError):
        problem = error.problem
        text = f"{problem.status} {problem.title}"
        if problem.detail:
            text += f": {problem.detail}"
        for item in problem.errors or []:
            where = ".".join(str(part) for part in item.loc)
            text += f"\n  {where}: {item.msg}"
        return text
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with Client(resolve_url(args.url), token=args.token, timeout=args.timeout, max_retries=args.retries) as client:
            return _run(args, client, _Out(args.json))
    except MegaloadError as error:
        print(f"megaload-client: error: {_describe(error)}", file=sys.stderr)
        return 1
    except ValidationError as error:  # arguments the request models refuse
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())
        print(f"megaload-client: invalid argument: {reasons}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"megaload-client: invalid argument: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the download directory cannot be written
        print(f"megaload-client: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("megaload-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
