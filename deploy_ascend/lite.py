"""MindSpore Lite for Ascend: converter configuration, converter command, and a runner.

Everything here but :func:`run_lite` is plain text generation (no framework import);
``mindspore_lite`` is imported only inside :func:`run_lite` / :func:`lite_available`. It has no
wheel for Python 3.11 on the package registry: on such a machine :func:`run_lite` raises
:class:`LiteUnavailableError` with that explanation.

The converter configuration (``converter_lite --configFile``) is an INI file whose
``[ascend_context]`` section holds, per the MindSpore Lite "Ascend Conversion Tool" page:

- ``input_format`` (``NCHW``), ``input_shape`` (``name:[n,c,h,w]``, the input's name in the
  MindIR: ``x`` for these networks, whose ``construct`` takes ``x``; check it with
  :func:`deploy_ascend.mindir_export.mindir_info` -> ``short_name``),
- ``precision_mode`` (one of :data:`PRECISION_MODES`), ``output_type`` (``FP32``),
- ``insert_op_config_file_path``: the AIPP configuration, a separate prototxt file
  (``aipp_op { ... }``, CANN ATC format). AIPP is not a section of the converter config.

AIPP (optional) moves the input normalisation onto the Ascend pre-processing unit: the model
then takes the raw 8-bit grayscale image (``input_format: YUV400_U8``, single channel) and
computes ``(pixel - mean_chn_0 - min_chn_0) * var_reci_chn_0`` = ``(pixel - mean) / std``
with ``mean_chn_0 = 0``, ``min_chn_0 = mean`` and ``var_reci_chn_0 = 1 / std`` (``mean`` and
``std`` in 0..255 units, as ``irkd.data.normalize`` uses them). Per the CANN documentation the
model input then becomes UINT8 in NHWC layout (for one channel the same memory as NCHW), and
AIPP cannot be combined with dynamic batch/resolution gears (``dynamic_dims``). Not checked on
an Ascend device here.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from irkd.files import write_text_atomic

__all__ = [
    "AIPP_INPUT_FORMATS",
    "PRECISION_MODES",
    "LiteUnavailableError",
    "aipp_config",
    "aipp_path_for",
    "converter_command",
    "converter_config",
    "lite_available",
    "run_lite",
    "write_converter_config",
]

#: ``[ascend_context] precision_mode`` values (MindSpore Lite docs; default enforce_fp16).
PRECISION_MODES = (
    "enforce_fp32",
    "preferred_fp32",
    "enforce_fp16",
    "enforce_origin",
    "preferred_optimal",
)

#: AIPP input formats this module writes (single-channel 8-bit input).
AIPP_INPUT_FORMATS = ("YUV400_U8",)

_OUTPUT_TYPES = ("FP32", "FP16", "UINT8")
_INPUT_FORMATS = ("NCHW", "NHWC", "ND")

LITE_MISSING = (
    "mindspore_lite is not installed: it has no wheel for Python 3.11 on the package "
    "registry. Run this on an Ascend (or MindSpore Lite) environment with the "
    "mindspore-lite wheel matching its Python and CANN versions; MindIR files can still be "
    "checked here with deploy_ascend.mindir_export.roundtrip_check and timed with "
    "deploy_ascend.latency.mindir_latency."
)


class LiteUnavailableError(RuntimeError):
    """``mindspore_lite`` is missing or cannot be imported."""


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    out = tuple(shape)
    if len(out) != 4 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in out):
        raise ValueError(f"input_shape must be 4 positive integers (N, C, H, W), got {shape!r}")
    return out


def _fmt(v: float) -> str:
    """A float as prototxt text: enough digits, no exponent."""
    text = f"{v:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def aipp_config(aipp: Mapping[str, Any], *, height: int = 256, width: int = 256) -> str:
    """The AIPP configuration file text (``aipp_op { ... }``) that normalises a gray input.

    Args:
        aipp: ``{"mean": float, "std": float}`` in 0..255 units (the dataset statistics the
            network was trained with); optional ``"input_format"`` (``YUV400_U8``).
        height: Source image height (``src_image_size_h``).
        width: Source image width (``src_image_size_w``).

    Returns:
        The text; the converter config points to it with ``insert_op_config_file_path``.

    Raises:
        ValueError: A missing/unknown key, or mean outside 0..255, or std not positive.
    """
    unknown = set(aipp) - {"mean", "std", "input_format"}
    if unknown:
        raise ValueError(f"aipp: unknown keys {sorted(unknown)} (use mean, std, input_format)")
    if "mean" not in aipp or "std" not in aipp:
        raise ValueError("aipp needs 'mean' and 'std' (0..255 units)")
    mean, std = float(aipp["mean"]), float(aipp["std"])
    if not (math.isfinite(mean) and 0.0 <= mean <= 255.0):
        raise ValueError(f"aipp mean must be in 0..255 (8-bit units), got {mean}")
    if not (math.isfinite(std) and std > 0.0):
        raise ValueError(f"aipp std must be positive, got {std}")
    fmt = str(aipp.get("input_format", "YUV400_U8"))
    if fmt not in AIPP_INPUT_FORMATS:
        raise ValueError(f"aipp input_format must be one of {AIPP_INPUT_FORMATS}, got {fmt!r}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"aipp_config: {name} must be a positive integer, got {v!r}")
    lines = [
        "# AIPP: (pixel - mean_chn_0 - min_chn_0) * var_reci_chn_0 = (pixel - mean) / std",
        f"# mean = {mean!r}, std = {std!r} (0..255 units); input: {fmt}, {height}x{width}",
        "aipp_op {",
        "    aipp_mode : static",
        "    related_input_rank : 0",
        f"    input_format : {fmt}",
        "    csc_switch : false",
        f"    src_image_size_w : {width}",
        f"    src_image_size_h : {height}",
        "    mean_chn_0 : 0",
        f"    min_chn_0 : {_fmt(mean)}",
        f"    var_reci_chn_0 : {_fmt(1.0 / std)}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def converter_config(
    *,
    input_shape: Sequence[int] = (1, 1, 256, 256),
    precision_mode: str = "enforce_fp16",
    aipp: Mapping[str, Any] | None = None,
    aipp_path: str | os.PathLike[str] = "aipp.cfg",
    input_name: str = "x",
    input_format: str = "NCHW",
    output_type: str | None = "FP32",
) -> str:
    """The ``converter_lite --configFile`` text for an Ascend conversion.

    Args:
        input_shape: Static ``(N, C, H, W)`` of the model input.
        precision_mode: One of :data:`PRECISION_MODES` (``enforce_fp16``: all FP16, fastest;
            ``preferred_fp32``: FP32 where the operator supports it).
        aipp: ``{"mean", "std"}`` (0..255 units) to normalise on the AIPP unit (see
            :func:`aipp_config`); None feeds the normalised float32 input as exported.
        aipp_path: Where the AIPP file lives (written into ``insert_op_config_file_path``);
            only used with ``aipp``.
        input_name: The model input's name in the MindIR (``x`` for these networks).
        input_format: ``NCHW`` (as exported), ``NHWC`` or ``ND``.
        output_type: ``FP32`` (float32 logits whatever the precision mode), ``FP16``,
            ``UINT8``, or None to leave it out.

    Returns:
        The INI text with an ``[ascend_context]`` section.

    Raises:
        ValueError: An unknown option or a malformed shape.
    """
    shape = _check_shape(input_shape)
    if precision_mode not in PRECISION_MODES:
        raise ValueError(f"precision_mode must be one of {PRECISION_MODES}, got {precision_mode!r}")
    if input_format not in _INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {_INPUT_FORMATS}, got {input_format!r}")
    if output_type is not None and output_type not in _OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {_OUTPUT_TYPES} or None, got {output_type!r}")
    if not input_name or any(c in input_name for c in ":;[]\n="):
        raise ValueError(f"input_name must be a plain tensor name, got {input_name!r}")
    lines = [
        "[ascend_context]",
        f"input_format={input_format}",
        f"input_shape={input_name}:[{','.join(str(d) for d in shape)}]",
        f"precision_mode={precision_mode}",
    ]
    if output_type is not None:
        lines.append(f"output_type={output_type}")
    if aipp is not None:
        aipp_config(aipp, height=shape[2], width=shape[3])  # validate now
        lines.append(f"insert_op_config_file_path={os.fspath(aipp_path)}")
    return "\n".join(lines) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def aipp_path_for(config_path: str | os.PathLike[str]) -> Path:
    """Where :func:`write_converter_config` puts the AIPP file: ``<stem>_aipp.cfg`` beside it."""
    p = Path(config_path)
    return p.with_name(f"{p.stem}_aipp.cfg")


def write_converter_config(
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] = (1, 1, 256, 256),
    precision_mode: str = "enforce_fp16",
    aipp: Mapping[str, Any] | None = None,
    input_name: str = "x",
    input_format: str = "NCHW",
    output_type: str | None = "FP32",
) -> Path:
    """Write the converter configuration (and, with ``aipp``, its AIPP file) atomically.

    With ``aipp`` the AIPP text goes to :func:`aipp_path_for` (``<stem>_aipp.cfg`` in the same
    folder) and the config points to it by absolute path: rewrite the pair if the folder moves.

    Args:
        path: The config file to write (e.g. ``ascend.cfg``).
        input_shape: As :func:`converter_config`.
        precision_mode: As :func:`converter_config`.
        aipp: As :func:`converter_config`; the AIPP file is written too.
        input_name: As :func:`converter_config`.
        input_format: As :func:`converter_config`.
        output_type: As :func:`converter_config`.

    Returns:
        The config file's path.
    """
    dest = Path(path)
    aipp_file = aipp_path_for(dest).resolve() if aipp is not None else None
    text = converter_config(
        input_shape=input_shape,
        precision_mode=precision_mode,
        aipp=aipp,
        aipp_path=aipp_file if aipp_file is not None else "aipp.cfg",
        input_name=input_name,
        input_format=input_format,
        output_type=output_type,
    )
    if aipp is not None and aipp_file is not None:
        shape = _check_shape(input_shape)
        _write_text_atomic(aipp_file, aipp_config(aipp, height=shape[2], width=shape[3]))
    _write_text_atomic(dest, text)
    return dest


def converter_command(
    mindir_path: str | os.PathLike[str],
    config_path: str | os.PathLike[str],
    output_stem: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] | None = None,
    input_name: str = "x",
    converter: str = "converter_lite",
) -> str:
    """The shell command that converts a MindIR for Ascend with ``converter_lite``.

    Args:
        mindir_path: The exported MindIR (``--modelFile``).
        config_path: The converter config (``--configFile``).
        output_stem: Output path without suffix (``--outputFile``; the converter appends
            ``.mindir``; a trailing ``.mindir`` given here is dropped).
        input_shape: Also pass ``--inputShape=name:n,c,h,w`` (the documented way to fix a
            static shape on the command line); None leaves it to the config file.
        input_name: The input's name for ``--inputShape``.
        converter: The converter executable.

    Returns:
        One shell-quoted command line.
    """
    stem = os.fspath(output_stem)
    if stem.endswith(".mindir"):
        stem = stem[: -len(".mindir")]
    args = [
        converter,
        "--fmk=MINDIR",
        f"--modelFile={os.fspath(mindir_path)}",
        f"--outputFile={stem}",
        "--optimize=ascend_oriented",
        f"--configFile={os.fspath(config_path)}",
    ]
    if input_shape is not None:
        shape = _check_shape(input_shape)
        args.append(f"--inputShape={input_name}:{','.join(str(d) for d in shape)}")
    return " ".join(shlex.quote(a) for a in args)


@functools.cache
def _lite_import_error() -> str | None:
    try:
        importlib.import_module("mindspore_lite")
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"{type(exc).__name__}: {exc}"
    return None


def lite_available() -> bool:
    """Whether ``mindspore_lite`` imports here (the result is cached)."""
    return _lite_import_error() is None


def _import_lite() -> Any:
    err = _lite_import_error()
    if err is not None:
        raise LiteUnavailableError(f"{LITE_MISSING} (import failed: {err})")
    return importlib.import_module("mindspore_lite")


def _as_list(inputs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if not arrays:
        raise ValueError("run_lite: no inputs given")
    return [np.ascontiguousarray(a) for a in arrays]


def run_lite(
    model_path: str | os.PathLike[str],
    inputs: np.ndarray | Sequence[np.ndarray],
    *,
    device: Literal["ascend", "cpu"] = "ascend",
    device_id: int = 0,
    provider: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    warmup: int = 10,
    runs: int = 50,
) -> tuple[list[np.ndarray], list[float]]:
    """Run a MindIR with MindSpore Lite and time it.

    Args:
        model_path: A MindIR (converted for Ascend with ``--optimize=ascend_oriented`` for
            ``device="ascend"``, or as exported by MindSpore for ``cpu``).
        inputs: One array per model input, in the model's input order, with the model's
            dtype (float32 normalised; uint8 raw pixels for an AIPP model). A shape other than
            the model's triggers ``Model.resize`` first.
        device: ``ascend`` or ``cpu`` (``Context.target``).
        device_id: Ascend device id.
        provider: ``Context.ascend.provider`` (``"ge"`` on some cloud setups), or None.
        config_path: Optional run-time config file for ``build_from_file``.
        warmup: Untimed runs first.
        runs: Timed runs (>= 1).

    Returns:
        ``(outputs, latencies_ms)``: the last run's outputs as numpy arrays and the wall time
        of each timed ``predict`` (outputs copied to numpy inside the timing).

    Raises:
        LiteUnavailableError: ``mindspore_lite`` is not installed (the message says why and
            what to do), instead of an ImportError traceback.
        FileNotFoundError: No model file.
        ValueError: Bad ``device``/``warmup``/``runs`` or a number of inputs that disagrees
            with the model.
    """
    if device not in ("ascend", "cpu"):
        raise ValueError(f"run_lite: device must be 'ascend' or 'cpu', got {device!r}")
    if warmup < 0 or runs < 1:
        raise ValueError(f"run_lite: need warmup >= 0 and runs >= 1, got {warmup}, {runs}")
    arrays = _as_list(inputs)
    mslite = _import_lite()
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"run_lite: model file {path} not found")

    context = mslite.Context()
    context.target = [device]
    if device == "ascend":
        context.ascend.device_id = device_id
        if provider is not None:
            context.ascend.provider = provider
    model = mslite.Model()
    if config_path is None:
        model.build_from_file(str(path), mslite.ModelType.MINDIR, context)
    else:
        model.build_from_file(str(path), mslite.ModelType.MINDIR, context, os.fspath(config_path))

    model_inputs = model.get_inputs()
    if len(model_inputs) != len(arrays):
        raise ValueError(f"run_lite: the model has {len(model_inputs)} inputs, got {len(arrays)}")
    if any(list(t.shape) != list(a.shape) for t, a in zip(model_inputs, arrays, strict=True)):
        model.resize(model_inputs, [list(a.shape) for a in arrays])
        model_inputs = model.get_inputs()
    for t, a in zip(model_inputs, arrays, strict=True):
        t.set_data_from_numpy(a)

    def once() -> list[np.ndarray]:
        return [o.get_data_to_numpy() for o in model.predict(model_inputs)]

    for _ in range(warmup):
        once()
    latencies: list[float] = []
    outputs: list[np.ndarray] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        outputs = once()
        latencies.append((time.perf_counter() - t0) * 1e3)
    return outputs, latencies
