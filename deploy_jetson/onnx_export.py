"""ONNX export of a PyTorch network, with structural and numerical checks.

The exported graph has one input ``image`` (N, 1, H, W) float32, already normalised with the
dataset mean/std, and one output ``logits`` (N, 1, H, W) float32 (no sigmoid), exactly as the
eager network. A static export fixes N, H and W; a dynamic one names them ``batch``,
``height`` and ``width``. H and W must be multiples of 16 (four 2x2 poolings; use multiples
of 32 to be safe on any registered network).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, chosen on purpose.
PyTorch >= 2.9 defaults to the ``torch.export``-based exporter (``dynamo=True``), which needs
the ``onnxscript`` package (not a dependency of this project) and in torch 2.13 writes opset 20
by default, implementing operators from opset 18 only and down-converting to a lower requested
opset "which may not be successful". The TorchScript exporter needs nothing beyond torch and
onnx, writes ``opset_version=17`` natively (the highest opset TensorRT 8.6 of JetPack 6.0
parses), takes ``dynamic_axes`` directly, and gives a plain graph of Conv/Resize/Reduce*/...
nodes (BatchNorm folded into the convolutions) that every TensorRT version in
``deploy_jetson.trt_ops`` supports. It is deprecated upstream (PyTorch prints a
DeprecationWarning, silenced here); when it goes away, switch to ``dynamo=True`` with
``onnxscript`` installed and re-run the round-trip and operator tests.
"""

from __future__ import annotations

import collections
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from irkd.files import atomic_path

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SPATIAL_MULTIPLE",
    "check_onnx",
    "export_onnx",
    "ort_compare",
    "ort_session",
    "verify_onnx",
]

INPUT_NAME = "image"
"""Name of the graph input: (N, 1, H, W) float32, normalised with the dataset mean/std."""

OUTPUT_NAME = "logits"
"""Name of the graph output: (N, 1, H, W) float32 logits."""

DEFAULT_OPSET = 17
"""ONNX opset of the exports: the highest that TensorRT 8.6 (JetPack 6.0) parses."""

SPATIAL_MULTIPLE = 16
"""H and W of an export must be multiples of this (four 2x2 poolings in every network)."""

#: The exporter's own deprecation notices: the TorchScript exporter is chosen on purpose.
_EXPORTER_WARNINGS = (
    r".*legacy TorchScript-based ONNX export.*",
    r"The feature will be removed.*",
)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_size(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    height: int = 256,
    width: int = 256,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a network to one self-contained ONNX file.

    The network is traced in eval mode (its previous train/eval mode is restored afterwards)
    on its own device with a zero input of shape (batch, 1, height, width). The file holds all
    weights (no external data) and is written atomically: a temporary file in the target
    folder, then ``os.replace``.

    Args:
        model: A network taking (N, 1, H, W) float32 and returning logits (N, 1, H, W).
        path: Destination ``.onnx`` file (parent folders are created).
        height: Traced input height (a multiple of 16).
        width: Traced input width (a multiple of 16).
        batch: Traced batch size (the fixed batch of a static export).
        dynamic: Make batch, height and width dynamic axes (``batch``/``height``/``width``).
        opset: ONNX opset (17 keeps the graph parseable by TensorRT 8.6).

    Returns:
        The written path.

    Raises:
        ValueError: A size is not a positive integer, or H/W not a multiple of 16.
    """
    _check_size("height", height)
    _check_size("width", width)
    _check_size("batch", batch)
    if height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE:
        raise ValueError(
            f"export size {height}x{width}: height and width must be multiples of "
            f"{SPATIAL_MULTIPLE} (32 to be safe)"
        )
    dest = Path(path)
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        dummy = torch.zeros(batch, 1, height, width, dtype=torch.float32, device=_device_of(model))
        with warnings.catch_warnings():
            for pattern in _EXPORTER_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                # torch's stubs name paths only; the TorchScript exporter writes to a buffer too
                buffer,  # type: ignore[arg-type]
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {
        "irkd.network": type(model).__name__,
        "irkd.input": f"{INPUT_NAME}: (N, 1, H, W) float32, normalised with the dataset mean/std",
        "irkd.output": f"{OUTPUT_NAME}: (N, 1, H, W) float32 logits (apply a sigmoid)",
        "irkd.dynamic": "true" if dynamic else "false",
        "irkd.traced_shape": f"{batch}x1x{height}x{width}",
    }
    onnx.helper.set_model_props(proto, meta)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return dest


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """Shape of a graph input/output: ints for fixed dims, names (or "?") for dynamic ones."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _io(values: Iterable[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    return [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
        }
        for v in values
    ]


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Every node of a graph, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def check_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate an ONNX file and summarise it.

    Runs ``onnx.checker.check_model(full_check=True)`` (which includes strict shape
    inference) and refuses files that keep weights outside (external data).

    Args:
        path: The ``.onnx`` file.

    Returns:
        ``opset`` (of the default domain), ``ir_version``, ``producer``, ``inputs`` and
        ``outputs`` (name, shape with dynamic dims as names, dtype), ``op_counts`` (op type ->
        nodes, sorted by name), ``nodes``, ``initializers``, ``parameters`` (weight elements),
        ``size_bytes`` and ``metadata``.

    Raises:
        FileNotFoundError: No such file.
        onnx.checker.ValidationError: The model is invalid.
        ValueError: The model stores tensors as external data.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file {p} not found")
    onnx.checker.check_model(str(p), full_check=True)
    model = onnx.load(str(p), load_external_data=False)
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise ValueError(
            f"{p}: {len(external)} tensors are stored as external data ({', '.join(external[:5])}"
            f"{', ...' if len(external) > 5 else ''}); a deployable file must be self-contained"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    counts = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in _all_nodes(model.graph)
    )
    return {
        "path": str(p),
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
        "op_counts": dict(sorted(counts.items())),
        "nodes": sum(counts.values()),
        "initializers": len(model.graph.initializer),
        "parameters": int(
            sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)
        ),
        "size_bytes": p.stat().st_size,
        "metadata": {m.key: m.value for m in model.metadata_props},
    }


def _threads() -> int:
    """Intra-op threads for onnxruntime: $IRKD_TORCH_THREADS / $OMP_NUM_THREADS, else 0 (auto)."""
    for var in ("IRKD_TORCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def ort_session(
    path: str | os.PathLike[str], providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """An onnxruntime session for ``path``.

    Args:
        path: The ``.onnx`` file.
        providers: Execution providers in preference order; None takes every available one
            in onnxruntime's order (CUDA/TensorRT first where onnxruntime-gpu is installed).

    The intra-op thread count follows ``$IRKD_TORCH_THREADS`` (then ``$OMP_NUM_THREADS``),
    like the PyTorch side, so that timings on a shared machine compare.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _threads()
    chosen = list(providers) if providers is not None else ort.get_available_providers()
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)


def ort_compare(
    path: str | os.PathLike[str],
    model: nn.Module,
    inputs: np.ndarray,
    providers: Sequence[str] | None = None,
) -> float:
    """Largest absolute difference between onnxruntime and the eager network.

    Args:
        path: The exported ``.onnx`` file.
        model: The eager network (run in eval mode under ``torch.inference_mode``; its mode
            is restored afterwards).
        inputs: (N, 1, H, W) input, cast to float32.
        providers: onnxruntime providers; None means ``["CPUExecutionProvider"]`` (the
            reference numerics; pass others explicitly to check a GPU provider).

    Returns:
        ``max |ort - eager|`` over all output elements (NaN if either side produced NaN).

    Raises:
        ValueError: ``inputs`` is not 4-D, or the two outputs differ in shape.
    """
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"inputs must be (N, 1, H, W), got shape {x.shape}")
    sess = ort_session(path, providers if providers is not None else ["CPUExecutionProvider"])
    (got,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ref = model(torch.from_numpy(x).to(_device_of(model))).float().cpu().numpy()
    finally:
        model.train(was_training)
    if got.shape != ref.shape:
        raise ValueError(f"onnxruntime output {got.shape} != eager output {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return float(np.nan) if np.isnan(diff).any() else float(diff.max())


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    shapes: Sequence[Sequence[int]],
    *,
    seed: int = 0,
    providers: Sequence[str] | None = None,
) -> dict[str, float]:
    """:func:`ort_compare` on seeded standard-normal inputs of several shapes.

    Args:
        path: The exported ``.onnx`` file.
        model: The eager network.
        shapes: Input shapes, e.g. ``[(1, 1, 256, 256), (2, 1, 128, 160)]`` for a dynamic
            export (a static export accepts only its traced shape).
        seed: numpy seed of the inputs.
        providers: As in :func:`ort_compare`.

    Returns:
        ``{"NxCxHxW": max_abs_diff}`` in the order of ``shapes``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for shape in shapes:
        x = rng.standard_normal(tuple(shape)).astype(np.float32)
        out["x".join(str(int(s)) for s in shape)] = ort_compare(path, model, x, providers)
    return out
