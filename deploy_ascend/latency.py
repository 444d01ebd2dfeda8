"""Latency of a MindIR (``nn.GraphCell``) and of the eager MindSpore network, on this host.

Both time one forward pass and its copy to numpy (``.asnumpy()`` synchronises), after untimed
warm-up runs that also absorb graph compilation. On Ascend the same functions time the NPU
(the device is whatever MindSpore's context targets); MindSpore Lite is timed by
:func:`deploy_ascend.lite.run_lite`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import mindspore as ms
import numpy as np
from mindspore import nn

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first convolution)
from deploy_ascend.mindir_export import load_mindir
from irkd.bench import latency_summary
from ms_impl.runtime import context_mode

__all__ = ["eager_latency", "mindir_latency"]


def _check(shape: Sequence[int], warmup: int, runs: int) -> tuple[int, ...]:
    s = tuple(int(d) for d in shape)
    if len(s) != 4 or min(s) < 1:
        raise ValueError(f"shape must be 4 positive integers (N, C, H, W), got {shape!r}")
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")
    return s


def _time(fn: Callable[[], Any], warmup: int, runs: int) -> tuple[float, list[float]]:
    """Seconds of the first call (compilation included) and ms of each timed call."""
    t0 = time.perf_counter()
    fn()
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return first_s, out


def _input(shape: tuple[int, ...], seed: int) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def mindir_latency(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of a MindIR file run through ``mindspore.load`` + ``nn.GraphCell``.

    Args:
        path: The ``.mindir`` file.
        shape: Input ``(N, C, H, W)`` (the file's static shape).
        warmup: Untimed runs (the first one includes the graph build; reported as
            ``first_call_s``).
        runs: Timed runs.
        seed: Seed of the random float32 input.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "load_s", "first_call_s",
        "runs", "warmup", "shape", "runner"}``.
    """
    s = _check(shape, warmup, runs)
    t0 = time.perf_counter()
    cell = load_mindir(path)
    load_s = time.perf_counter() - t0
    x = _input(s, seed)
    first_s, lat = _time(lambda: cell(x).asnumpy(), warmup, runs)
    return {
        **latency_summary(lat),
        "load_s": load_s,
        "first_call_s": first_s,
        "runs": runs,
        "warmup": warmup,
        "shape": list(s),
        "runner": "mindspore.nn.GraphCell",
    }


def eager_latency(
    net: nn.Cell,
    shape: Sequence[int],
    *,
    mode: Literal["pynative", "graph"] = "pynative",
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of the MindSpore network itself, in eval mode.

    Args:
        net: The network (its training flag is restored after).
        shape: Input ``(N, C, H, W)``.
        mode: ``pynative`` (eager) or ``graph`` (compiled on the first call; the context mode
            is switched for the call and restored after).
        warmup: Untimed runs (the first one, with any compilation, is ``first_call_s``).
        runs: Timed runs.
        seed: Seed of the random float32 input.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "first_call_s", "runs",
        "warmup", "shape", "mode", "runner"}``.
    """
    if mode not in ("pynative", "graph"):
        raise ValueError(f"mode must be 'pynative' or 'graph', got {mode!r}")
    s = _check(shape, warmup, runs)
    x = _input(s, seed)
    was_training = bool(net.training)
    net.set_train(False)
    try:
        with context_mode(mode):
            first_s, lat = _time(lambda: net(x).asnumpy(), warmup, runs)
    finally:
        if was_training:
            net.set_train(True)
    return {
        **latency_summary(lat),
        "first_call_s": first_s,
        "runs": runs,
        "warmup": warmup,
        "shape": list(s),
        "mode": mode,
        "runner": f"mindspore eager ({mode})",
    }
