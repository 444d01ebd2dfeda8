"""MindSpore execution context, set in one place."""

from __future__ import annotations

from typing import Literal

import mindspore as ms

__all__ = ["set_mode", "device_target"]


def set_mode(mode: Literal["graph", "pynative"] = "pynative", device: str | None = None) -> None:
    """Select GRAPH_MODE or PYNATIVE_MODE, and optionally the device (``CPU``, ``Ascend``).

    Args:
        mode: ``graph`` compiles whole cells (faster training); ``pynative`` runs eagerly.
        device: Device target; ``None`` keeps MindSpore's choice.
    """
    if mode not in ("graph", "pynative"):
        raise ValueError(f"mode must be 'graph' or 'pynative', got {mode!r}")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if device is not None:
        ms.set_device(device)


def device_target() -> str:
    """The device MindSpore runs on now (``CPU``, ``GPU`` or ``Ascend``)."""
    return str(ms.get_context("device_target"))
