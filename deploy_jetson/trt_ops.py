"""Which ONNX operators the TensorRT of a JetPack release parses, and a check of a graph.

Source: the support matrix of the ONNX-TensorRT parser, ``docs/operators.md`` of
https://github.com/onnx/onnx-tensorrt, together with that repository's ``docs/Changelog.md``
(read for this module on the versions listed below; only rows marked "Y" count):

* ``"8.6"`` (JetPack 6.0 ships TensorRT 8.6.2): the TensorRT 8.5 GA matrix ("TensorRT 8.5
  supports operators up to Opset 17") plus the operators the 8.6 EA/GA changelog adds
  (``GroupNormalization``, ``LayerNormalization``, ``IsInf``). 8.6 parses opsets up to 17.
* ``"10.3"`` (JetPack 6.1 and 6.2 ship TensorRT 10.3.0): the TensorRT 9.2 matrix (a superset
  of the 8.6 list: adds ``CastLike`` and ``Hardmax``) plus ``DeformConv`` (changelog 10.1);
  the 10.x pages state opsets 9 to 20. The 10.4+ additions (``BlackmanWindow``,
  ``HammingWindow``, ``HannWindow``: 10.4; ``STFT``: 10.5; ``Attention``: 10.14;
  ``RotaryEmbedding``, ``RMSNormalization``, ``TensorScatter``: 10.15) are left out, and so are
  ``Gelu`` and ``Mish``, which the 10.15 matrix lists but no changelog entry dates: a
  conservative list can only reject a graph TensorRT would accept, never the reverse.

Only operator types (and the Resize modes, the one restriction that bites upsampling
networks) are checked here: the parser's other per-operator restrictions (initializer-only
weights, axes given as constants, ...) are met by the TorchScript exporter's constant-folded
graphs; the TensorRT build itself (:mod:`deploy_jetson.tensorrt_build`) is the final word.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

__all__ = [
    "DEFAULT_TRT_VERSION",
    "JETPACK_TRT_VERSION",
    "TRT_OPSET_RANGE",
    "TRT_SUPPORTED_OPS",
    "TrtOpProblem",
    "check_trt_ops",
    "trt_problems",
    "unsupported_ops",
]

_TRT_8_6 = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan",
        "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
        "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf",
        "Exp", "Expand", "EyeLike", "Flatten", "Floor", "GRU", "Gather", "GatherElements",
        "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater",
        "GreaterOrEqual", "GridSample", "GroupNormalization", "HardSigmoid", "HardSwish",
        "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LRN",
        "LSTM", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
        "Loop", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean",
        "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
        "Not", "OneHot", "Or", "PRelu", "Pad", "ParametricSoftplus", "Pow", "QuantizeLinear",
        "RNN", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
        "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
        "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu",
        "Reshape", "Resize", "ReverseSequence", "RoiAlign", "Round", "ScaledTanh", "Scan",
        "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign",
        "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth",
        "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile",
        "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    }
)  # fmt: skip

_TRT_10_3 = _TRT_8_6 | {"CastLike", "Hardmax", "DeformConv"}

TRT_SUPPORTED_OPS: dict[str, frozenset[str]] = {"8.6": _TRT_8_6, "10.3": frozenset(_TRT_10_3)}
"""ONNX operator types (default domain) the ONNX-TensorRT parser supports, by TensorRT version."""

TRT_OPSET_RANGE: dict[str, tuple[int, int]] = {"8.6": (1, 17), "10.3": (9, 20)}
"""Opsets of the default domain each version parses (8.x states no lower bound)."""

JETPACK_TRT_VERSION: dict[str, str] = {"6.0": "8.6", "6.1": "10.3", "6.2": "10.3"}
"""The TensorRT (as a key of ``TRT_SUPPORTED_OPS``) that each JetPack 6 release ships."""

DEFAULT_TRT_VERSION = "10.3"
"""TensorRT of the current JetPack (6.1/6.2 for Jetson Orin); use "8.6" for JetPack 6.0."""

_RESIZE_MODES = frozenset({"nearest", "linear"})
_RESIZE_COORDS = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)


@dataclass(frozen=True)
class TrtOpProblem:
    """One node TensorRT cannot parse.

    Attributes:
        op_type: ONNX operator type (``domain::type`` outside the default domain).
        node: Node name (``<unnamed #i>`` when the node has none).
        reason: Why (unsupported operator, or the unsupported attribute value).
    """

    op_type: str
    node: str
    reason: str


def _load(model_or_path: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    p = Path(model_or_path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX file {p} not found")
    return onnx.load(str(p), load_external_data=False)


def _supported(version: str) -> frozenset[str]:
    try:
        return TRT_SUPPORTED_OPS[version]
    except KeyError:
        raise ValueError(
            f"unknown TensorRT version {version!r}; known: {', '.join(TRT_SUPPORTED_OPS)}"
        ) from None


def _walk(graph: onnx.GraphProto, counter: list[int]):
    """Yield ``(node, name)`` for every node, subgraphs included."""
    for node in graph.node:
        counter[0] += 1
        yield node, node.name or f"<unnamed #{counter[0]}>"
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, counter)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g, counter)


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def trt_problems(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto, version: str = DEFAULT_TRT_VERSION
) -> list[TrtOpProblem]:
    """Every node of a graph that the given TensorRT cannot parse, in graph order.

    Checks the operator type against ``TRT_SUPPORTED_OPS[version]`` (nodes outside the
    default ONNX domain count as unsupported: they would need a TensorRT plugin), the Resize
    modes, and the model's opset against ``TRT_OPSET_RANGE`` (reported as op type ``opset``).

    Args:
        model_or_path: An ``onnx.ModelProto`` or an ``.onnx`` file.
        version: A key of ``TRT_SUPPORTED_OPS``.

    Raises:
        ValueError: Unknown version.
        FileNotFoundError: No such file.
    """
    supported = _supported(version)
    model = _load(model_or_path)
    problems: list[TrtOpProblem] = []
    lo, hi = TRT_OPSET_RANGE[version]
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo <= imp.version <= hi:
            reason = f"opset {imp.version} outside TensorRT {version}'s {lo}-{hi}"
            problems.append(TrtOpProblem("opset", "<model>", reason))
    for node, name in _walk(model.graph, [0]):
        if node.domain not in ("", "ai.onnx"):
            op = f"{node.domain}::{node.op_type}"
            problems.append(TrtOpProblem(op, name, "custom domain (needs a plugin)"))
        elif node.op_type not in supported:
            problems.append(TrtOpProblem(node.op_type, name, "unsupported operator"))
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if mode not in _RESIZE_MODES:
                problems.append(TrtOpProblem("Resize", name, f"mode={mode}"))
            if coords not in _RESIZE_COORDS:
                problems.append(
                    TrtOpProblem("Resize", name, f"coordinate_transformation_mode={coords}")
                )
            if _attr(node, "antialias", 0):
                problems.append(TrtOpProblem("Resize", name, "antialias=1"))
    return problems


def unsupported_ops(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto, version: str = DEFAULT_TRT_VERSION
) -> list[str]:
    """Sorted operator types of a graph that the given TensorRT cannot parse (empty: all fine).

    Args:
        model_or_path: An ``onnx.ModelProto`` or an ``.onnx`` file.
        version: A key of ``TRT_SUPPORTED_OPS``.
    """
    return sorted({p.op_type for p in trt_problems(model_or_path, version)})


def check_trt_ops(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto, version: str = DEFAULT_TRT_VERSION
) -> None:
    """Raise if any node of a graph is outside what the given TensorRT parses.

    Args:
        model_or_path: An ``onnx.ModelProto`` or an ``.onnx`` file.
        version: A key of ``TRT_SUPPORTED_OPS``.

    Raises:
        ValueError: Lists each offending operator type with its reasons and node names
            (the first five of each), or names an unknown version.
    """
    problems = trt_problems(model_or_path, version)
    if not problems:
        return
    by_op: dict[str, list[TrtOpProblem]] = {}
    for p in problems:
        by_op.setdefault(p.op_type, []).append(p)
    lines = []
    for op, items in sorted(by_op.items()):
        reasons = sorted({p.reason for p in items})
        names = [p.node for p in items]
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
        lines.append(f"  {op} [{'; '.join(reasons)}]: {shown}")
    where = model_or_path if not isinstance(model_or_path, onnx.ModelProto) else "the graph"
    raise ValueError(
        f"{where}: {len(problems)} node(s) TensorRT {version} cannot parse (ONNX-TensorRT "
        f"operators.md support matrix), operator types {', '.join(sorted(by_op))}:\n"
        + "\n".join(lines)
    )
