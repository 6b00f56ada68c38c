"""Which device and distributed backend the service uses, and how much memory it has.

``auto`` picks CUDA when this torch can use it (backend ``nccl``), else the CPU (``gloo``).
Asking for what the host cannot do is a :class:`ValueError` naming the setting, raised before
anything starts.
"""

from __future__ import annotations

__all__ = ["resolve_device", "resolve_backend", "device_memory_bytes"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is usable, else ``cpu``. ``cuda`` without CUDA raises."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this torch cannot use CUDA; use --device cpu")
    return device


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``nccl`` on CUDA, ``gloo`` on CPU. ``nccl`` on CPU raises."""
    if backend == "auto":
        return "nccl" if device == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and device != "cuda":
        raise ValueError("backend 'nccl' needs device 'cuda'; use --backend gloo on CPU")
    return backend


def device_memory_bytes(device: str, local_rank: int = 0, *, cgroup_files: tuple[str, ...] | None = None) -> int:
    """Total memory of the device models live on: the GPU's for ``cuda``; for ``cpu`` the host's
    RAM, or the container's memory limit (cgroup, see :func:`cgroup_memory_limit`) when lower."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(local_rank).total_memory)
    import psutil

    total = int(psutil.virtual_memory().total)
    limit = cgroup_memory_limit() if cgroup_files is None else cgroup_memory_limit(cgroup_files)
    return min(total, limit) if limit else total


_CGROUP_LIMIT_FILES = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)


def cgroup_memory_limit(files: tuple[str, ...] = _CGROUP_LIMIT_FILES) -> int | None:
    """The memory limit of this process's container (cgroup), or None when there is none.
    ``files`` are tried in order; the first that exists decides."""
    for name in files:
        try:
            with open(name, encoding="ascii") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit() and 0 < int(text) < (1 << 60):  # v1 reports "no limit" as a huge number
            return int(text)
        return None
    return None
