"""PyTorch execution context, set in one place: the twin of ``ms_impl.runtime``.

MindSpore chooses GRAPH or PYNATIVE mode (``ms_impl.runtime.set_mode``); PyTorch runs
eagerly and chooses a device and its intra-op threads instead.
"""

from __future__ import annotations

import os

import torch

__all__ = ["device_target", "resolve_device", "torch_threads"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``$IRKD_DEVICE``, else CUDA when available, else the CPU."""
    if device is None:
        device = os.environ.get("IRKD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_target() -> str:
    """The device a run would use now (``cpu``, ``cuda``), as :func:`resolve_device` picks."""
    return resolve_device().type


def torch_threads() -> int:
    """Intra-op threads: ``$IRKD_TORCH_THREADS``, else ``$OMP_NUM_THREADS``, else the CPUs
    this process may run on (``os.sched_getaffinity``, else ``os.cpu_count()``).
    """  # noqa: D205
    for var in ("IRKD_TORCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
