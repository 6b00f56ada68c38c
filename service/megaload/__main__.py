"""``megaload serve`` (also ``python -m megaload serve``): run the service on uvicorn.

Every setting has a flag here and a ``MEGALOAD_*`` environment variable (see
:class:`megaload.settings.Settings`); flags win over the environment.

``megaload export-hf CHECKPOINT OUT_DIR`` converts a checkpoint to a Hugging Face model
directory offline, on CPU (:func:`megaload.hf.export_hf`); ``megaload import-hf HF_DIR OUT``
the other way (:func:`megaload.checkpoint.import_hf`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser", "settings_from_args", "url_host"]

_EPILOG = """\
environment: every flag has a MEGALOAD_<NAME> variable (MEGALOAD_HOST, MEGALOAD_PORT,
MEGALOAD_CHECKPOINT_ROOTS and MEGALOAD_SAVE_ROOTS as ':'-separated lists, MEGALOAD_MEMORY_BUDGET,
MEGALOAD_BACKEND, MEGALOAD_DEVICE, MEGALOAD_TOKEN, MEGALOAD_TOKEN_FILE, MEGALOAD_READ_TOKENS
(','-separated), MEGALOAD_READ_TOKEN_FILE, MEGALOAD_INSECURE, MEGALOAD_LOG_FORMAT, MEGALOAD_LOG_LEVEL,
MEGALOAD_SHUTDOWN_GRACE_SECONDS, MEGALOAD_MAX_FINISHED_JOBS, MEGALOAD_MEMORY_WAIT_SECONDS,
MEGALOAD_STREAM_IDLE_TIMEOUT_SECONDS, MEGALOAD_TENSOR_PARALLEL, MEGALOAD_PIPELINE_PARALLEL,
MEGALOAD_COLLECTIVE_TIMEOUT_SECONDS).
Flags take precedence. Under torchrun, WORLD_SIZE/RANK/LOCAL_RANK are read; rank 0 serves HTTP.
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="megaload", description="Megatron checkpoint loading service.")
    parser.add_argument("--version", action="version", version=f"megaload {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the megaload HTTP service (one uvicorn worker, one engine).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = serve.add_argument
    a("--host", help="listen address (default 127.0.0.1; a non-loopback address needs a token or --insecure)")
    a("--port", type=int, help="listen port (default 8000; 0 picks a free port)")
    a(
        "--checkpoint-root",
        dest="checkpoint_roots",
        action="append",
        metavar="DIR",
        help="directory checkpoints may be read from; repeatable (default: ./data if it exists)",
    )
    a(
        "--save-root",
        dest="save_roots",
        action="append",
        metavar="DIR",
        help="directory checkpoints may be saved to; repeatable (default: none, saves refused)",
    )
    a("--memory-budget", metavar="SIZE", help="bytes resident models may use: a size ('64GiB', '500MB', '1.5 TiB', "
      "a byte count; KB/MB/GB x1000, KiB/MiB/GiB x1024) or a share of memory ('80%%') "
      "(default: 50%% of RAM, or of the container's memory limit, on CPU; 80%% of GPU memory on CUDA)")
    a("--backend", choices=["auto", "gloo", "nccl"], help="torch.distributed backend (default auto: nccl on CUDA, else gloo)")
    a("--device", choices=["auto", "cpu", "cuda"], help="where models live (default auto: cuda if available)")
    a("--token", help="the operator's bearer token, required on /v1 routes and allowing every request "
      "(prefer --token-file: flags show in ps)")
    a("--token-file", metavar="FILE", help="file holding the operator's bearer token")
    a("--read-token", dest="read_tokens", action="append", metavar="TOKEN",
      help="a read-only bearer token: GET and HEAD on /v1 routes, and tokenize; repeatable; needs --token "
      "(prefer --read-token-file)")
    a("--read-token-file", metavar="FILE", help="file holding read-only bearer tokens, one per line")
    a("--insecure", action="store_true", default=None, help="allow a non-loopback address without a token")
    a("--log-format", choices=["text", "json"], help="log line format (default text)")
    a("--log-level", choices=["debug", "info", "warning", "error"], help="log level (default info)")
    a("--shutdown-grace-seconds", type=float, metavar="S",
      help="how long shutdown waits for a running save before abandoning it (default 30)")
    a("--max-finished-jobs", type=int, metavar="N", help="finished jobs kept for GET /v1/jobs (default 1000)")
    a("--memory-wait-seconds", type=float, metavar="S",
      help="how long a load waits for memory that loads in progress or evictions will free, before 503 (default 600)")
    a("--huge-pages", choices=["auto", "on", "off"],
      help="transparent huge pages for the parameters a load fills (default auto: on unless THP is off or a VM "
      "balloon reports free pages to its host; MEGALOAD_HUGE_PAGES for the library)")
    a("--stream-idle-timeout-seconds", type=float, metavar="S",
      help="a streamed response whose client takes no data for this long loses its lease and its connection "
      "(default 30)")
    a("--tensor-parallel", type=int, metavar="T",
      help="tensor-parallel size of loaded models (default: world size / P, so 1 without torchrun; "
      "T*P must equal torchrun's world size)")
    a("--pipeline-parallel", type=int, metavar="P",
      help="pipeline-parallel size of loaded models (default 1; T*P must equal torchrun's world size)")
    a("--collective-timeout-seconds", type=float, metavar="S",
      help="how long a collective waits for the other ranks before the service fails and exits (default 300)")
    export = sub.add_parser(
        "export-hf",
        help="convert a checkpoint to a Hugging Face model directory (offline, CPU)",
        description="Write CHECKPOINT (Megatron Bridge or Megatron-LM, torch_dist) as the directory "
        "transformers' save_pretrained writes: config.json, generation_config.json, the tokenizer files "
        "bundled in the checkpoint, model-0000k-of-0000n.safetensors and model.safetensors.index.json. "
        "Runs on CPU; needs neither a GPU nor Megatron Bridge. Written beside OUT_DIR and renamed into place.",
    )
    e = export.add_argument
    e("checkpoint", metavar="CHECKPOINT", help="save directory or iter_* directory")
    e("out_dir", metavar="OUT_DIR", help="directory to create (must not exist, or be empty)")
    e("--architecture", metavar="NAME",
      help="target architecture, e.g. MistralForCausalLM or mistral (default: chosen from the config: "
      "experts -> Qwen3MoeForCausalLM, q/k norm -> Qwen3ForCausalLM, q/k/v biases -> Qwen2ForCausalLM, "
      "sliding window -> MistralForCausalLM, else LlamaForCausalLM)")
    e("--overwrite", action="store_true", help="replace OUT_DIR when it already holds a Hugging Face model")
    e("--max-shard-size", default="5GB", metavar="SIZE",
      help="largest safetensors shard: a byte count or a number with a unit, B, KB, MB, GB, TB (x1000) or "
      "KiB, MiB, GiB, TiB (x1024), e.g. 5GB or 500MiB (default 5GB, as save_pretrained)")
    imp = sub.add_parser(
        "import-hf",
        help="convert a Hugging Face model directory to a Megatron Bridge checkpoint (offline, CPU)",
        description="Write HF_DIR (config.json, model.safetensors or model.safetensors.index.json with its "
        "shards, tokenizer files) as the Megatron Bridge checkpoint upstream's AutoBridge import writes: "
        "torch_dist, run_config.yaml, the tokenizer bundled. Architectures: LlamaForCausalLM, "
        "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM; a config.json asking "
        "for remote code is refused. Tensors are read one at a time. Runs on CPU; needs neither a GPU nor "
        "Megatron Bridge. Written beside OUT and renamed into place; nothing is left at OUT on error.",
    )
    i = imp.add_argument
    i("hf_dir", metavar="HF_DIR", help="Hugging Face model directory (what save_pretrained writes)")
    i("out", metavar="OUT", help="save directory to create (must not exist, or be empty)")
    i("--overwrite", action="store_true", help="replace OUT when it already holds a checkpoint")
    return parser


def _import_hf(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError, import_hf

    try:
        out = import_hf(args.hf_dir, args.out, overwrite=args.overwrite)
    except (CheckpointError, OSError) as e:  # OSError: OUT or its parent cannot be written
        print(f"megaload import-hf: {type(e).__name__}: {_cli_hint(str(e))}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _parse_size(value: str) -> int:
    from megaload_client.sizes import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise SystemExit(f"megaload export-hf: --max-shard-size: {e}") from None


def _cli_hint(message: str) -> str:
    """An error of the library as this command line says it: the flag, not the keyword."""
    return message.replace("pass overwrite=True", "pass --overwrite")


def _export_hf(args: argparse.Namespace) -> int:
    import logging

    max_shard_bytes = _parse_size(args.max_shard_size)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .hf import export_hf

    try:
        out = export_hf(args.checkpoint, args.out_dir, architecture=args.architecture, overwrite=args.overwrite,
                        max_shard_bytes=max_shard_bytes)
    except (CheckpointError, OSError) as e:  # OSError: OUT_DIR or its parent cannot be written
        print(f"megaload export-hf: {type(e).__name__}: {_cli_hint(str(e))}", file=sys.stderr)
        return 1
    print(out)
    return 0


def settings_from_args(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from .settings import Settings

    given = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        return Settings(**given)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_input=False, include_url=False):
            where = ".".join(str(x) for x in err["loc"]) or "settings"
            lines.append(f"  {where}: {err['msg']}")
        raise SystemExit("megaload: invalid settings:\n" + "\n".join(lines)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export-hf":
        return _export_hf(args)
    if args.command == "import-hf":
        return _import_hf(args)
    if args.command != "serve":
        parser.print_help()
        return 2
    settings = settings_from_args(args)
    from .devices import resolve_backend, resolve_device

    try:
        resolve_backend(settings.backend, resolve_device(settings.device))
    except ValueError as e:
        raise SystemExit(f"megaload: invalid settings:\n  {e}") from None
    from .logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if settings.rank != 0:
        return _follow(settings)
    import uvicorn

    from .app import create_app
    from .server import uvicorn_config

    config = uvicorn_config(create_app(settings), settings)
    server = uvicorn.Server(config)
    _announce_when_ready(server, config.app, settings)
    try:
        server.run()
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful shutdown
        return 130
    return 0 if server.started else 1


def url_host(host: str) -> str:
    """``host`` as a URL's host: a wildcard address as loopback, IPv6 in brackets."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _announce_when_ready(server: Any, app: Any, settings: Any) -> None:
    """Log one line once uvicorn listens and the engine is ready (when ``/readyz`` says 200):
    the URL, what is resident and the memory budget. Nothing when the engine fails (it logs
    why) or the server stops first."""
    import logging
    import threading
    import time

    def watch() -> None:
        while True:
            if server.should_exit:
                return
            runtime = getattr(app.state, "runtime", None)
            if server.started and runtime is not None:
                if runtime.ready:
                    break
                if runtime.engine_gone:
                    return
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else settings.port
        url = f"http://{url_host(settings.host)}:{port}"
        info = runtime.info()
        logging.getLogger("megaload.serve").info(
            "megaload ready on %s (%d models resident, memory budget %.1f GiB, %s/%s, world size %d); "
            "status page %s/, API reference %s/docs",
            url, info.models, info.memory.budget_bytes / 2**30, info.device, info.backend, info.world_size, url, url,
        )

    threading.Thread(target=watch, name="megaload-ready", daemon=True).start()


def _follow(settings: Any) -> int:
    """Ranks other than 0 under torchrun: no HTTP, run what rank 0 broadcasts.

    SIGTERM and SIGINT do not stop a follower: it keeps running rank 0's commands (a save in
    progress is collective) until rank 0 broadcasts the shutdown; if rank 0 is gone, the
    collective timeout ends the wait and the follower exits with status 1."""
    import logging
    import signal

    from .engine import Engine

    log = logging.getLogger("megaload.follower")

    def wait_for_rank_0(signum: int, _frame: Any) -> None:
        log.info("rank %d: %s received; waiting for rank 0's shutdown", settings.rank, signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, wait_for_rank_0)
    signal.signal(signal.SIGINT, wait_for_rank_0)
    log.info("rank %d (pid %d) follows rank 0", settings.rank, os.getpid())
    engine = Engine.from_settings(settings)
    engine.follow()
    return 0


if __name__ == "__main__":
    sys.exit(main())
