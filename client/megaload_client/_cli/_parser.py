"""The ``megaload-client`` argument parser and the types of its arguments.

:func:`build_parser` is the whole command line: its help texts are the reference page
(docs/reference/client.md is rendered from it). The parser raises
:class:`~megaload_client._cli._errors.UsageError` instead of exiting, so that ``--json`` can
format a bad command line like any other error.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .._environment import DEFAULT_URL, TOKEN_ENV, URL_ENV
from .._version import __version__
from ..sizes import SIZE_SYNTAX, parse_size
from ._errors import UsageError

__all__ = ["build_parser"]


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


def _whole_number(text: str, minimum: int, bound: str) -> int:
    """``text`` as an int of at least ``minimum`` (``bound`` says so in the refusal)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def _index_arg(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


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

    load = command("load", "load a checkpoint (or find it resident); shows the load's phase and bytes read",
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


