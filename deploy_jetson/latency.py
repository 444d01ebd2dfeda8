"""Inference latency of an ONNX file (onnxruntime) and of an eager PyTorch network.

Both time single forward calls on a seeded standard-normal input of a given shape after
untimed warm-up calls, and report the median, 90th percentile and mean in milliseconds. The
TensorRT counterpart is :func:`deploy_jetson.tensorrt_build.run_engine`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy_jetson.onnx_export import INPUT_NAME, ort_session
from irkd.bench import latency_summary

__all__ = ["ort_latency", "torch_latency"]


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")


def _input(shape: Sequence[int], seed: int) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be (N, 1, H, W) with positive sizes, got {shape}")
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ort_latency(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    warmup: int = 10,
    runs: int = 50,
    providers: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of one ``session.run`` of an ONNX file.

    Args:
        path: The ``.onnx`` file.
        shape: Input shape (N, 1, H, W); a static export accepts only its own shape.
        warmup: Untimed runs first.
        runs: Timed runs.
        providers: onnxruntime providers in preference order; None takes every available one.
        seed: Seed of the random input.

    Returns:
        :func:`irkd.bench.latency_summary` plus ``provider`` (the one used first),
        ``providers``, ``shape``, ``runs``, ``warmup`` and ``threads`` (0: onnxruntime's
        default).
    """
    _check_counts(warmup, runs)
    x = _input(shape, seed)
    sess = ort_session(path, providers)
    feed = {INPUT_NAME: x}
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    used = sess.get_providers()
    return {
        **latency_summary(times),
        "provider": used[0],
        "providers": used,
        "shape": list(x.shape),
        "runs": runs,
        "warmup": warmup,
        "threads": sess.get_session_options().intra_op_num_threads,
    }


def torch_latency(
    model: nn.Module,
    shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of one eager forward (eval mode, ``torch.inference_mode``).

    On a CUDA device each call is followed by ``torch.cuda.synchronize`` before the clock
    stops. The network is moved to ``device`` for the measurement and put back on its device
    and in its train/eval mode afterwards.

    Args:
        model: The network.
        shape: Input shape (N, 1, H, W).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ...
        warmup: Untimed calls first.
        runs: Timed calls.
        seed: Seed of the random input.

    Returns:
        :func:`irkd.bench.latency_summary` plus ``device``, ``shape``, ``runs``, ``warmup``
        and ``threads`` (torch intra-op threads).
    """
    _check_counts(warmup, runs)
    dev = torch.device(device)
    x = torch.from_numpy(_input(shape, seed)).to(dev)
    param = next(model.parameters(), None)
    home = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    cuda = dev.type == "cuda"
    model.to(dev).eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                if cuda:
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(dev)
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.to(home).train(was_training)
    return {
        **latency_summary(times),
        "device": str(dev),
        "shape": list(x.shape),
        "runs": runs,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
    }
