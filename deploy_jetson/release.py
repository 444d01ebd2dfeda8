"""The Jetson side of ``irkd release`` and ``irkd bench latency`` (PyTorch, ONNX, TensorRT).

:func:`export_for_release` writes a model's ONNX files (static 1x1x256x256 and dynamic
batch/H/W, opset 17), re-checks each against the eager PyTorch network with onnxruntime,
checks every operator against TensorRT's list, and records the trtexec commands; where the
tensorrt package is installed it also builds the FP16 engine. :func:`latency_runtimes` lists
the runtimes present here for the latency benchmark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy_jetson.latency import ort_latency, torch_latency
from deploy_jetson.onnx_export import check_onnx, export_onnx, verify_onnx
from deploy_jetson.tensorrt_build import (
    build_engine,
    run_engine,
    tensorrt_available,
    trtexec_command,
)
from deploy_jetson.trt_ops import DEFAULT_TRT_VERSION, check_trt_ops
from irkd.bench import latency_summary
from torch_ref.models import create_model
from torch_ref.predict import load_network

__all__ = [
    "CALIBRATION_IMAGES",
    "calibration_images",
    "evaluate_onnx",
    "ROUNDTRIP_ATOL",
    "ROUNDTRIP_RTOL",
    "export_for_release",
    "latency_runtimes",
    "versions",
]

ROUNDTRIP_ATOL = 1e-4
ROUNDTRIP_RTOL = 1e-4  # of the largest |logit|: trained logits reach +-30


CALIBRATION_IMAGES = 32
"""Training images shipped for INT8 calibration on the Jetson (normalised, 1x256x256 each)."""


def calibration_images(
    root: str | os.PathLike[str], mean: float, std: float, *, n: int = CALIBRATION_IMAGES,
    height: int = 256, width: int = 256,
) -> np.ndarray:  # fmt: skip
    """``n`` training-split images, normalised like the model's input, as (n, 1, H, W) float32.

    Evenly spaced over the split (deterministic); each image is zero-padded (in normalised
    units: the mean) or centre-cropped to ``height x width``.
    """
    from irkd.data import IRSTDDataset, normalize

    ds = IRSTDDataset(root, "train")
    ids = [ds.ids[int(i)] for i in np.linspace(0, len(ds.ids) - 1, min(n, len(ds.ids)))]
    out = np.zeros((len(ids), 1, height, width), np.float32)
    for k, id_ in enumerate(ids):
        x = normalize(ds.load(id_).image, mean, std)
        h, w = min(height, x.shape[0]), min(width, x.shape[1])
        y0, x0 = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
        out[k, 0, :h, :w] = x[y0 : y0 + h, x0 : x0 + w]
    return out


def _max_logit(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.inference_mode():
        return float(model(torch.from_numpy(x)).abs().max())


def export_for_release(info: Any, out_dir: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Export one model (an ``irkd.release.ModelInfo``) for Jetson into ``out_dir``.

    Raises:
        ValueError: An artifact differs from the eager network beyond
            ``ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * max|logit|``, or uses an operator TensorRT
            does not support.
    """
    model = load_network(info.network, info.path)
    h, w = spec["shape"][2], spec["shape"][3]
    static = export_onnx(model, out_dir / f"{info.network}.onnx", height=h, width=w)
    dynamic = export_onnx(model, out_dir / f"{info.network}_dynamic.onnx", dynamic=True)
    bound = ROUNDTRIP_ATOL + ROUNDTRIP_RTOL * _max_logit(model, (1, 1, h, w))
    diffs = {
        "static": verify_onnx(static, model, [(1, 1, h, w)]),
        "dynamic": verify_onnx(dynamic, model, [(1, 1, h, w), (2, 1, 128, 160)]),
    }
    worst = max(v for d in diffs.values() for v in d.values())
    if not worst <= bound:
        raise ValueError(f"ONNX vs eager max abs diff {worst:.3g} > {bound:.3g}: {diffs}")
    for path in (static, dynamic):
        check_trt_ops(path, DEFAULT_TRT_VERSION)
    info_static = check_onnx(static)
    # Commands name files relative to this folder (run them from it): the release moves.
    engines = {"fp16": f"{info.network}_fp16.engine", "int8": f"{info.network}_int8.engine"}
    calib = f"{info.network}_int8.calib"
    dyn_shapes = ((1, 1, 64, 64), (1, 1, h, w), (4, 1, 1024, 1024))  # min, opt, max
    commands = {
        "cwd": f"{out_dir.parent.name}/{out_dir.name}",
        "trtexec_fp16": trtexec_command(static.name, engines["fp16"], fp16=True),
        "trtexec_int8": trtexec_command(
            static.name, engines["int8"], fp16=True, int8=True, calib_cache=calib
        ),
        "trtexec_fp16_dynamic": trtexec_command(
            dynamic.name,
            f"{info.network}_dynamic_fp16.engine",
            fp16=True,
            shapes=dyn_shapes,
        ),
    }
    artifacts: dict[str, Any] = {"onnx": static, "onnx_dynamic": dynamic}
    notes = []
    calib_images = None
    if info.data_root and Path(info.data_root).is_dir():
        calib_images = calibration_images(info.data_root, info.mean, info.std, height=h, width=w)
        artifacts["calibration_images"] = out_dir / "calibration_images.npy"
        np.save(artifacts["calibration_images"], calib_images)
        commands["int8_engine_python"] = (
            'python -c "import numpy as np; from deploy_jetson.tensorrt_build import '
            f"build_engine; build_engine('{static.name}', '{engines['int8']}', int8=True, "
            f"calib_images=np.load('calibration_images.npy'), calib_cache='{calib}')\"  "
            "# writes the cache trtexec_int8 reads"
        )
    else:
        notes.append(
            f"training data {info.data_root!r} not found: no INT8 calibration images shipped"
        )
    if tensorrt_available():
        artifacts["engine_fp16"] = build_engine(static, out_dir / engines["fp16"], fp16=True)
        if calib_images is not None:
            artifacts["engine_int8"] = build_engine(
                static, out_dir / engines["int8"], int8=True, calib_images=calib_images,
                calib_cache=out_dir / calib,
            )  # fmt: skip
    else:
        notes.append(
            "tensorrt is not installed here: engines are built on the Jetson with the trtexec "
            "commands (INT8: first int8_engine_python, which calibrates on the shipped "
            "calibration_images.npy and writes the cache)"
        )
    return {
        "artifacts": artifacts,
        "checks": {
            "onnx_vs_eager_max_abs": diffs,
            "bound": bound,
            "onnx_checker": "passed",
            "opset": info_static["opset"],
            "tensorrt_ops": f"all supported by TensorRT {DEFAULT_TRT_VERSION}",
        },
        "commands": commands,
        "notes": notes,
    }


def evaluate_onnx(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    mean: float,
    std: float,
    split: str = "test",
    multiple: int = 32,
) -> dict[str, Any]:
    """IRSTD metrics of a dynamic ONNX artifact on a split, run with onnxruntime (CPU).

    The release's student is scored through its exported file, not its eager network, so
    the figures in the manifest are those of the artifact that ships.
    """
    from deploy_jetson.onnx_export import INPUT_NAME, ort_session
    from irkd.data import IRSTDDataset
    from irkd.evaluate import evaluate_predictions, predict_split, summary_metrics

    session = ort_session(path, ["CPUExecutionProvider"])

    def forward(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]

    dataset = IRSTDDataset(root, split)
    result = evaluate_predictions(
        predict_split(dataset, forward, mean=mean, std=std, multiple=multiple, desc=split)
    )
    return {
        "split": split,
        "dataset": str(root),
        "runtime": "onnxruntime-cpu",
        "artifact": Path(path).name,
        **summary_metrics(result["metrics"]),
    }


def _summary(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("median_ms", "p90_ms", "mean_ms") if k in d} | {
        k: d[k] for k in ("provider", "device", "threads") if k in d
    }


def latency_runtimes(
    *, warmup: int = 10, runs: int = 50
) -> dict[str, Callable[[str, str | None, Path], dict[str, Any]]]:
    """Runtime name -> ``fn(network, weights_or_None, workdir) -> latency`` (batch 1, 256^2).

    PyTorch eager on the CPU (and CUDA when available), onnxruntime on the CPU (and its
    CUDA provider when present), TensorRT FP16 where tensorrt is installed.
    """
    shape = (1, 1, 256, 256)

    def model_of(network: str, weights: str | None) -> torch.nn.Module:
        if weights:
            return load_network(network, weights)
        torch.manual_seed(0)
        return create_model(network).eval()

    def onnx_of(network: str, weights: str | None, workdir: Path) -> Path:
        path = workdir / f"{network}.onnx"
        if not path.exists():
            export_onnx(model_of(network, weights), path)
        return path

    out: dict[str, Callable[[str, str | None, Path], dict[str, Any]]] = {
        "pytorch-cpu": lambda n, w, d: _summary(
            torch_latency(model_of(n, w), shape, warmup=warmup, runs=runs)
        ),
        "onnxruntime-cpu": lambda n, w, d: _summary(
            ort_latency(
                onnx_of(n, w, d),
                shape,
                warmup=warmup,
                runs=runs,
                providers=["CPUExecutionProvider"],
            )
        ),  # fmt: skip
    }
    if torch.cuda.is_available():
        out["pytorch-cuda"] = lambda n, w, d: _summary(
            torch_latency(model_of(n, w).cuda(), shape, device="cuda", warmup=warmup, runs=runs)
        )
    try:
        import onnxruntime as ort

        cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:  # pragma: no cover - a dependency
        cuda_ort = False
    if cuda_ort:
        out["onnxruntime-cuda"] = lambda n, w, d: _summary(
            ort_latency(onnx_of(n, w, d), shape, warmup=warmup, runs=runs,
                        providers=["CUDAExecutionProvider"])
        )  # fmt: skip
    if tensorrt_available():

        def trt(n: str, w: str | None, d: Path) -> dict[str, Any]:
            engine = build_engine(onnx_of(n, w, d), d / f"{n}_fp16.engine", fp16=True)
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            _, lat = run_engine(engine, x, warmup=warmup, runs=runs)
            return _summary(latency_summary(lat))

        out["tensorrt-fp16"] = trt
    return out


def versions() -> dict[str, str]:
    """Tool versions of the Jetson path."""
    import onnx
    import onnxruntime

    v = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if tensorrt_available():  # pragma: no cover - not installable here
        import tensorrt

        v["tensorrt"] = tensorrt.__version__
    v["tensorrt_ops_checked_for"] = DEFAULT_TRT_VERSION
    return v
