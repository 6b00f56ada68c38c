#!/bin/sh
# Container entry point: `megaload serve "$@"` as the container's main process.
#
# MEGALOAD_NPROC_PER_NODE (default 1) is how many processes serve one model together, one per
# GPU. 1 runs the service directly; a larger number, or "gpu" (one per visible GPU), starts it
# under torchrun on this node: rank 0 answers HTTP, the other ranks execute what it broadcasts.
# `exec` keeps signals going straight to the server (SIGTERM drains a running save first).
set -eu

nproc="${MEGALOAD_NPROC_PER_NODE:-1}"
case "$nproc" in
    1)
        exec python3 -m megaload serve "$@"
        ;;
    gpu)
        ;;
    0 | *[!0-9]*)
        echo "megaload-entrypoint: MEGALOAD_NPROC_PER_NODE must be a positive integer or 'gpu', got '$nproc'" >&2
        exit 64
        ;;
esac
# torchrun forwards SIGTERM to every rank and kills them 30 s later unless told otherwise;
# give them the service's whole drain (HTTP grace plus save grace) and a margin.
grace="${MEGALOAD_SHUTDOWN_GRACE_SECONDS:-30}"
grace="${grace%%.*}"
case "$grace" in "" | *[!0-9]*) grace=30 ;; esac
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-$((2 * grace + 30))}"
exec torchrun --standalone --nnodes=1 --nproc-per-node="$nproc" -m megaload serve "$@"
