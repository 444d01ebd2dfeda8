"""MindSpore execution context, set in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import mindspore as ms

__all__ = ["context_mode", "device_target", "set_mode"]


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


@contextlib.contextmanager
def context_mode(mode: Literal["graph", "pynative"] | None) -> Iterator[None]:
    """Run a block in GRAPH_MODE or PYNATIVE_MODE and restore the previous mode after.

    ``None`` keeps the current mode. Graphs compiled before (``ms.jit`` train steps) stay
    valid across the switch.
    """
    if mode is None:
        yield
        return
    if mode not in ("graph", "pynative"):
        raise ValueError(f"mode must be 'graph', 'pynative' or None, got {mode!r}")
    before = ms.get_context("mode")
    want = ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE
    if before != want:
        ms.set_context(mode=want)
    try:
        yield
    finally:
        if before != want:
            ms.set_context(mode=before)
