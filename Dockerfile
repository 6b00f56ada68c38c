# syntax=docker/dockerfile:1
#
# megaload service images (see docs/deploy.md). Two targets:
#
#   docker build --target gpu -t megaload:gpu .    NVIDIA's PyTorch container (the default target)
#   docker build --target cpu -t megaload:cpu .    python:3.11-slim with the CPU build of torch
#
# Sites pin their own GPU base with --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:<yy.mm>-py3.
#
# Runtime contract (both targets):
#   - runs as the non-root user megaload (uid/gid 10001), one uvicorn worker, port 8000;
#   - checkpoints are read from /checkpoints (mount it read-only), saves go to /saves (writable);
#     both are checkpoint roots, so a saved model can be loaded again;
#   - the token comes from a file at run time (MEGALOAD_TOKEN_FILE, e.g. a mounted secret):
#     nothing secret is in any layer, and the service refuses to listen on 0.0.0.0 without one;
#   - SIGTERM drains: new requests stop, a running save gets MEGALOAD_SHUTDOWN_GRACE_SECONDS
#     (120) to finish. Give the container 300 s to stop (docker run --stop-timeout 300,
#     compose stop_grace_period, Kubernetes terminationGracePeriodSeconds);
#   - MEGALOAD_NPROC_PER_NODE=N (or gpu) serves one model from N GPUs under torchrun.

ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
ARG CPU_BASE_IMAGE=python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG MEGATRON_CORE_VERSION=0.16.1

# ---------------------------------------------------------------------------------- wheels
# The two distributions, built from source only (no dependencies resolved here).
FROM ${CPU_BASE_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY client/ client/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./client .

# ---------------------------------------------------------------------------------- cpu
FROM ${CPU_BASE_IMAGE} AS cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX_URL
ARG MEGATRON_CORE_VERSION
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX_URL}"
COPY --from=wheels /wheels /tmp/wheels
RUN printf 'torch==%s\nmegatron-core==%s\n' "${TORCH_VERSION}" "${MEGATRON_CORE_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt
RUN groupadd --system --gid 10001 megaload \
    && useradd --system --uid 10001 --gid megaload --home-dir /home/megaload --create-home \
       --shell /usr/sbin/nologin megaload \
    && mkdir -p /checkpoints /saves \
    && chown megaload:megaload /saves
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/megaload-entrypoint
COPY --chmod=0644 deploy/docker/healthcheck.py /usr/local/lib/megaload/healthcheck.py
ENV MEGALOAD_HOST=0.0.0.0 \
    MEGALOAD_PORT=8000 \
    MEGALOAD_CHECKPOINT_ROOTS=/checkpoints:/saves \
    MEGALOAD_SAVE_ROOTS=/saves \
    MEGALOAD_DEVICE=cpu \
    MEGALOAD_BACKEND=gloo \
    MEGALOAD_LOG_FORMAT=json \
    MEGALOAD_SHUTDOWN_GRACE_SECONDS=120 \
    MEGALOAD_NPROC_PER_NODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache
USER 10001:10001
WORKDIR /home/megaload
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python3", "/usr/local/lib/megaload/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/megaload-entrypoint"]
CMD []

# ---------------------------------------------------------------------------------- gpu
# NVIDIA's container brings CUDA, NCCL, torch and Transformer Engine; the install below keeps
# its torch (pinned to the version found) and adds megaload with megatron-core.
FROM ${BASE_IMAGE} AS gpu
ARG MEGATRON_CORE_VERSION
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheels /wheels /tmp/wheels
# PIP_CONSTRAINT may list several files: split on purpose.
# hadolint ignore=SC2086
RUN { if [ -n "${PIP_CONSTRAINT:-}" ]; then cat ${PIP_CONSTRAINT}; fi; \
      python3 -c "import torch; print('torch==' + torch.__version__)"; \
      echo "megatron-core==${MEGATRON_CORE_VERSION}"; } > /tmp/constraints.txt \
    && PIP_CONSTRAINT="" PIP_BREAK_SYSTEM_PACKAGES=1 \
       pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt
RUN groupadd --system --gid 10001 megaload \
    && useradd --system --uid 10001 --gid megaload --home-dir /home/megaload --create-home \
       --shell /usr/sbin/nologin megaload \
    && mkdir -p /checkpoints /saves \
    && chown megaload:megaload /saves
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/megaload-entrypoint
COPY --chmod=0644 deploy/docker/healthcheck.py /usr/local/lib/megaload/healthcheck.py
ENV MEGALOAD_HOST=0.0.0.0 \
    MEGALOAD_PORT=8000 \
    MEGALOAD_CHECKPOINT_ROOTS=/checkpoints:/saves \
    MEGALOAD_SAVE_ROOTS=/saves \
    MEGALOAD_DEVICE=cuda \
    MEGALOAD_BACKEND=nccl \
    MEGALOAD_LOG_FORMAT=json \
    MEGALOAD_SHUTDOWN_GRACE_SECONDS=120 \
    MEGALOAD_NPROC_PER_NODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache
USER 10001:10001
WORKDIR /home/megaload
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python3", "/usr/local/lib/megaload/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/megaload-entrypoint"]
CMD []
