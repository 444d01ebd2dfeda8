"""What a CPU/Jetson deployment does to go faster at the same accuracy (``irkd bench pareto``).

- :func:`fold_batchnorm`: BatchNorm folded into the convolution before it, in an eval-mode
  PyTorch network (the ONNX exporter already does this in the graphs it writes:
  :func:`count_onnx_ops` proves it on each export).
- :func:`quantize_int8_qdq`: onnxruntime static INT8 quantization in QDQ form, calibrated on
  the release's calibration images: the CPU stand-in for TensorRT INT8 (TensorRT reads the
  same QDQ graph as explicit quantization).
- :func:`ort_opt_session`: an onnxruntime session at a chosen graph optimisation level and
  thread count.
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from deploy_jetson.onnx_export import INPUT_NAME

__all__ = [
    "OPT_LEVELS",
    "count_onnx_ops",
    "fold_batchnorm",
    "ort_opt_session",
    "pareto_part",
    "quantize_int8_qdq",
    "torch_max_diff",
]

OPT_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
"""onnxruntime graph optimisation levels by short name (``all`` is onnxruntime's default)."""


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` in eval mode with every BatchNorm folded into its convolution.

    A pair is a ``Conv2d`` registered directly before a ``BatchNorm2d`` in the same parent
    (``conv1``/``bn1`` of a residual block, ``Sequential(conv, bn, ...)``); registration order
    does not prove that the forward applies one after the other, so the caller must compare
    outputs (:func:`irkd.bench` does, and the tests do for every registered network). The
    BatchNorm becomes ``nn.Identity``; the convolution gets a bias if it had none.

    Returns:
        ``(folded copy, number of BatchNorms folded)``; ``model`` is not changed.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(model).eval()
    folded = 0
    for parent in list(out.modules()):
        children = list(parent.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:], strict=False):
            if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d):
                setattr(parent, n1, fuse_conv_bn_eval(c1, c2))
                setattr(parent, n2, nn.Identity())
                folded += 1
    return out, folded


def count_onnx_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Operator type -> count over an ONNX file's main graph."""
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def ort_opt_session(
    path: str | os.PathLike[str], *, level: str = "all", threads: int = 0
) -> ort.InferenceSession:
    """A CPU onnxruntime session at optimisation ``level``, ``threads`` intra-op threads.

    ``threads`` 0 lets onnxruntime choose (one per physical core).

    Raises:
        ValueError: Unknown level or negative threads.
    """
    if level not in OPT_LEVELS:
        raise ValueError(f"unknown optimisation level {level!r}: one of {sorted(OPT_LEVELS)}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPT_LEVELS[level]
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over (n, 1, H, W) images, one at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._it = iter(np.ascontiguousarray(images, np.float32))

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x[None]}

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it for some methods
        pass


def quantize_int8_qdq(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    op_types: Sequence[str] | None = ("Conv",),
    per_channel: bool = True,
    method: str = "minmax",
) -> dict[str, Any]:
    """Static INT8 quantization of an ONNX file in QDQ form, calibrated on ``calibration``.

    Weights are signed INT8 (per output channel by default), activations unsigned INT8, scales
    from the activation ranges seen on ``calibration`` (onnxruntime's calibrators). By default
    only convolutions are quantized (attention's Sigmoid/Mul and the resizes stay float32), as
    TensorRT INT8 keeps layers without INT8 kernels in higher precision.

    Args:
        src: Float32 ONNX file (static or dynamic).
        dst: Destination of the quantized file.
        calibration: (n, 1, H, W) float32 normalised images (the release's
            ``calibration_images.npy``).
        op_types: Operator types to quantize (None: every type onnxruntime can).
        per_channel: Per-output-channel weight scales.
        method: ``minmax``, ``entropy`` or ``percentile``.

    Returns:
        ``{"path", "op_types", "per_channel", "method", "calibration_images", "ops"}``.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}: one of {sorted(methods)}")
    if calibration.ndim != 4 or calibration.shape[0] < 1:
        raise ValueError(f"calibration must be (n, 1, H, W) with n >= 1, got {calibration.shape}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(src),
        str(dst),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=list(op_types) if op_types else None,
        calibrate_method=methods[method],
    )
    return {
        "path": str(dst),
        "op_types": list(op_types) if op_types else None,
        "per_channel": per_channel,
        "method": method,
        "calibration_images": int(calibration.shape[0]),
        "ops": count_onnx_ops(dst),
    }


def torch_max_diff(a: nn.Module, b: nn.Module, x: np.ndarray) -> float:
    """Largest ``|a(x) - b(x)|`` of two networks in eval mode (inference mode)."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    with torch.inference_mode():
        return float((a.eval()(t) - b.eval()(t)).abs().max())


def _model(network: str, weights: str | None) -> nn.Module:
    from torch_ref.models import create_model
    from torch_ref.predict import load_network

    if weights:
        return load_network(network, weights)
    torch.manual_seed(0)
    return create_model(network).eval()


def pareto_part(spec: dict[str, Any], workdir: Path, say: Any = print) -> dict[str, Any]:
    """The PyTorch/onnxruntime half of ``irkd bench pareto``, in this process.

    Args:
        spec: ``{"networks": {network: weights or None}, "threads", "rounds", "warmup",
            "sweep": bool, "int8": [{"label", "network", "weights", "data", "mean", "std",
            "multiple", "eval": bool}], "calibration": {"method", "op_types"}}``.
        workdir: Scratch folder for the exported files.
        say: Progress messages.

    Returns:
        ``{"latency": {runtime: {network: summary}}, "accuracy": {runtime: {label: metrics}},
        "checks": {...}, "load_before", "load_after", "threads", "rounds"}``: runtimes
        ``pytorch-cpu``, ``pytorch-cpu-bnfold`` (BatchNorm folded), ``onnxruntime-cpu`` (the
        export as shipped: BatchNorm already folded by the exporter), ``onnxruntime-cpu-int8``
        (QDQ), and with ``sweep`` ``onnxruntime-cpu[level,tN]`` for every level and 1..2
        threads.
    """
    from deploy_jetson.onnx_export import export_onnx
    from deploy_jetson.release import calibration_images, evaluate_onnx
    from irkd.pareto import interleaved_latency

    threads = int(spec.get("threads") or 0)
    torch.set_num_threads(threads or torch.get_num_threads())
    x = np.random.default_rng(0).standard_normal((1, 1, 256, 256)).astype(np.float32)
    tx = torch.from_numpy(x)
    calls: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    sessions: dict[str, ort.InferenceSession] = {}

    def torch_call(m: nn.Module) -> Any:
        def call() -> None:
            with torch.inference_mode():
                m(tx).numpy()

        return call

    def ort_call(sess: ort.InferenceSession) -> Any:
        return lambda: sess.run(None, {INPUT_NAME: x})

    for net, weights in spec["networks"].items():
        say(f"[jetson] {net}: export, fold")
        model = _model(net, weights)
        folded, n_bn = fold_batchnorm(model)
        path = export_onnx(model, workdir / f"{net}.onnx")
        ops = count_onnx_ops(path)
        checks[net] = {
            "bn_folded_torch": n_bn,
            "bn_fold_max_abs_diff": torch_max_diff(model, folded, x),
            "onnx_batchnorm_nodes": ops.get("BatchNormalization", 0),
            "onnx_nodes": sum(ops.values()),
        }
        calls[f"pytorch-cpu|{net}"] = torch_call(model)
        calls[f"pytorch-cpu-bnfold|{net}"] = torch_call(folded)
        sessions[net] = ort_opt_session(path, level="all", threads=threads)
        calls[f"onnxruntime-cpu|{net}"] = ort_call(sessions[net])
        if spec.get("sweep"):
            for level in OPT_LEVELS:
                for t in (1, 2):
                    s = ort_opt_session(path, level=level, threads=t)
                    calls[f"onnxruntime-cpu[{level},t{t}]|{net}"] = ort_call(s)
    int8_paths: dict[str, Path] = {}
    cal_cfg = spec.get("calibration") or {}
    for item in spec.get("int8") or []:
        net = item["network"]
        say(f"[jetson] {item['label']} ({net}): INT8 QDQ")
        cal = calibration_images(item["data"], item["mean"], item["std"])
        dyn = export_onnx(_model(net, item["weights"]), workdir / f"{net}-dyn.onnx", dynamic=True)
        q = quantize_int8_qdq(
            dyn,
            workdir / f"{item['label']}-int8.onnx",
            cal,
            op_types=cal_cfg.get("op_types", ("Conv",)),
            method=cal_cfg.get("method", "minmax"),
        )
        checks[f"int8:{item['label']}"] = {k: v for k, v in q.items() if k != "path"}
        int8_paths[item["label"]] = Path(q["path"])
        sess = ort_opt_session(q["path"], level="all", threads=threads)
        calls.setdefault(f"onnxruntime-cpu-int8|{net}", ort_call(sess))
    say(f"[jetson] timing {len(calls)} entries interleaved")
    timed = interleaved_latency(
        calls, warmup=int(spec.get("warmup", 3)), rounds=int(spec.get("rounds", 20)), say=say
    )
    latency: dict[str, dict[str, Any]] = {}
    for key, summary in timed["latency"].items():
        runtime, net = key.split("|")
        latency.setdefault(runtime, {})[net] = summary
    accuracy: dict[str, dict[str, Any]] = {}
    for item in spec.get("int8") or []:
        if item.get("eval"):
            say(f"[jetson] {item['label']}: INT8 test-split metrics")
            m = evaluate_onnx(
                int8_paths[item["label"]],
                item["data"],
                mean=item["mean"],
                std=item["std"],
                multiple=int(item.get("multiple", 32)),
            )
            accuracy.setdefault("onnxruntime-cpu-int8", {})[item["label"]] = m
    return {
        "latency": latency,
        "accuracy": accuracy,
        "checks": checks,
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": threads},
        "load_before": timed["load_before"],
        "load_after": timed["load_after"],
        "rounds": timed["rounds"],
        "warmup": timed["warmup"],
    }
