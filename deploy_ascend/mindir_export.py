"""MindIR export of a MindSpore network, the round-trip check, and a MindIR file's I/O spec.

- :func:`export_mindir` writes a network (eval mode) as MindIR with :func:`mindspore.export`,
  atomically: to a temporary name in the target folder, then :func:`os.replace`.
- :func:`roundtrip_check` loads the file back (:func:`mindspore.load` + ``nn.GraphCell``) and
  returns the largest absolute difference to the eager network on given inputs.
- :func:`mindir_info` reads the input/output names, shapes and dtypes from the file (protobuf
  only, nothing is compiled).

Dynamic shapes (``dynamic=True``: input ``[None, C, None, None]``): every registered network
exports and runs with dynamic batch, H and W (checked at 1x256x256, 2x128x160, 1x96x64:
identical to the eager network). Two things in the model files make that possible under
MindSpore 2.10, and a network that breaks them fails here with :class:`DynamicShapeError`:

1. Resizes use the ``ResizeBilinearV2`` primitive directly (the one ``ops.interpolate`` calls
   for bilinear, so the numbers are the same): ``ops.interpolate(x, size=(ref.shape[2],
   ref.shape[3]))`` demands a constant size (*"the inputs should be constant, but found
   variable ..."*), and with a dynamic batch only it leaves run-time control flow the
   GraphCell cannot execute (*"Failed to get from actor ... BoolImm false"*).
2. DNANet's input check (H, W multiples of 16) runs only where the shape is constant
   (``F.isconstant``): a run-time ``raise`` primitive does not infer (*"Catch primitive:raise
   InferPrimitiveShape exception"*). Callers of a dynamic MindIR pad to a multiple of 32.

``export_mindir(dynamic=True)`` probes the exported graph at a second shape before it keeps it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first convolution)
from irkd.files import atomic_path

__all__ = [
    "DynamicShapeError",
    "export_mindir",
    "load_mindir",
    "mindir_info",
    "roundtrip_check",
]

#: How ``export_mindir`` names the file: ``mindspore.export`` appends this when it is missing.
SUFFIX = ".mindir"

_KNOWN_CAUSES = {
    "should be constant": (
        "ops.interpolate(size=...) read from a dynamic shape is rejected at graph compile "
        "(MindSpore 2.10 wants a constant size)"
    ),
    "Failed to get from actor": (
        "ops.interpolate's `dim_unknown is False` test stays run-time control flow in the "
        "exported graph, which GraphCell cannot run"
    ),
    "The actor already exists": (
        "ops.interpolate's `dim_unknown is False` test stays run-time control flow in the "
        "exported graph, which GraphCell cannot run"
    ),
    "primitive:raise": (
        "the network's input-shape check (`raise`) becomes a run-time raise primitive"
    ),
}


_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "DOUBLE": "float64"}


class DynamicShapeError(RuntimeError):
    """The network cannot be exported, or run after export, with a dynamic input shape."""


@contextlib.contextmanager
def _eval_mode(net: nn.Cell) -> Iterator[nn.Cell]:
    """Put ``net`` in eval mode for a block and restore its training flag after."""
    was_training = bool(net.training)
    net.set_train(False)
    try:
        yield net
    finally:
        if was_training:
            net.set_train(True)


def _final_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.name.endswith(SUFFIX) else p.with_name(p.name + SUFFIX)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _explain(exc: BaseException) -> str:
    text = str(exc)
    for key, why in _KNOWN_CAUSES.items():
        if key in text:
            return why
    return "see the MindSpore error"


def load_mindir(path: str | os.PathLike[str]) -> nn.GraphCell:
    """Load a MindIR file as a callable ``nn.GraphCell``.

    Args:
        path: A ``.mindir`` file.

    Raises:
        FileNotFoundError: No such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MindIR file {p} not found")
    return nn.GraphCell(ms.load(str(p)))


def export_mindir(
    net: nn.Cell,
    path: str | os.PathLike[str],
    *,
    height: int = 256,
    width: int = 256,
    batch: int = 1,
    channels: int = 1,
    dynamic: bool = False,
) -> Path:
    """Export ``net`` (in eval mode) as MindIR, atomically.

    The file is written under a temporary name in the target folder and moved onto ``path``
    with :func:`os.replace`: a reader never sees a half-written file, and an existing file is
    kept when the export fails. The network's training flag is restored after.

    Args:
        net: The network (``(N, C, H, W)`` float32 in, logits out).
        path: Destination; ``.mindir`` is appended when missing (as ``mindspore.export`` does).
        height: Input height of the static export (DNANet: a multiple of 32 is safe).
        width: Input width of the static export.
        batch: Batch size of the static export.
        channels: Input channels.
        dynamic: Export with input ``[None, channels, None, None]`` (batch, H and W dynamic),
            then load the file and run it once at ``(2, channels, height + 32, width + 32)``
            to prove it works.

    Returns:
        The written file.

    Raises:
        DynamicShapeError: ``dynamic=True`` and the network does not export or does not run
            with a dynamic shape (see the
            module docstring). Nothing is written.
        ValueError: A non-positive size.
    """
    for name, v in (("height", height), ("width", width), ("batch", batch), ("channels", channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"export_mindir: {name} must be a positive integer, got {v!r}")
    dest = _final_path(path)
    if dynamic:
        spec = ms.Tensor(shape=[None, channels, None, None], dtype=ms.float32)
    else:
        spec = ms.Tensor(np.zeros((batch, channels, height, width), np.float32))
    # atomic_path also gives the file the umask's mode: mindspore.export leaves it 0o400.
    with atomic_path(dest) as tmp:
        with _eval_mode(net):
            try:
                ms.export(net, spec, file_name=str(tmp), file_format="MINDIR")
            except Exception as exc:
                if not dynamic:
                    raise
                raise DynamicShapeError(
                    f"{type(net).__name__}: MindIR export with a dynamic input shape "
                    f"[None, {channels}, None, None] failed: {_explain(exc)} "
                    f"({_first_line(exc)}). Export static shapes (dynamic=False)."
                ) from exc
            if dynamic:
                _probe_dynamic(tmp, net, channels, height + 32, width + 32)
    return dest


def _probe_dynamic(path: Path, net: nn.Cell, channels: int, height: int, width: int) -> None:
    """Run a dynamically exported file once at a second shape; raise DynamicShapeError."""
    shape = (2, channels, height, width)
    try:
        out = load_mindir(path)(ms.Tensor(np.zeros(shape, np.float32))).asnumpy()
    except Exception as exc:
        raise DynamicShapeError(
            f"{type(net).__name__}: the MindIR exported with a dynamic input shape "
            f"[None, {channels}, None, None] does not run at {shape}: {_explain(exc)} "
            f"({_first_line(exc)}). Export static shapes (dynamic=False)."
        ) from exc
    if out.shape[0] != shape[0] or out.shape[2:] != shape[2:]:
        raise DynamicShapeError(
            f"{type(net).__name__}: the dynamically exported MindIR gave output shape "
            f"{out.shape} for input {shape}"
        )


def _as_batches(inputs: np.ndarray | Iterable[np.ndarray]) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    out = [np.asarray(x) for x in inputs]
    if not out:
        raise ValueError("roundtrip_check: no inputs given")
    return out


def roundtrip_check(
    mindir_path: str | os.PathLike[str],
    net: nn.Cell,
    inputs: np.ndarray | Iterable[np.ndarray],
) -> float:
    """Largest absolute difference between the loaded MindIR and the eager network.

    The file is loaded with :func:`mindspore.load` and run through ``nn.GraphCell``; the
    network runs in eval mode (its training flag is restored after) in the current context
    mode.

    Args:
        mindir_path: The exported file.
        net: The network it was exported from.
        inputs: One ``(N, C, H, W)`` array or several (each must match the file's input
            shape unless it was exported with a dynamic shape).

    Returns:
        ``max |mindir(x) - net(x)|`` over all inputs and elements (float32 arithmetic).

    Raises:
        FileNotFoundError: No such file.
        ValueError: No inputs, or output shapes that disagree.
    """
    cell = load_mindir(mindir_path)
    worst = 0.0
    with _eval_mode(net):
        for x in _as_batches(inputs):
            t = ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))
            got = cell(t).asnumpy()
            ref = net(t).asnumpy()
            if got.shape != ref.shape:
                raise ValueError(
                    f"roundtrip_check: MindIR output {got.shape} != eager output {ref.shape}"
                )
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref))))
    return worst


def _value_info(v: Any, dtype_names: dict[int, str]) -> dict[str, Any]:
    name = str(v.name)
    tensors = list(v.tensor)
    shape = [int(d) for d in tensors[0].dims] if tensors else None
    dtype = None
    if tensors:
        raw = dtype_names.get(int(tensors[0].data_type), "UNKNOWN")
        dtype = _DTYPES.get(raw, raw.lower())
    return {
        "name": name,
        "short_name": name.rpartition(":")[2],
        "shape": shape,  # -1 marks a dynamic dimension
        "dtype": dtype,
    }


def mindir_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Input and output specs of a MindIR file, read from its protobuf (nothing compiled).

    Args:
        path: A ``.mindir`` file.

    Returns:
        ``{"path", "size_bytes", "producer", "ir_version", "inputs", "outputs", "parameters"}``;
        each of ``inputs``/``outputs`` is a list of ``{"name", "short_name", "shape",
        "dtype"}`` (``shape`` uses -1 for dynamic dimensions; None where the file does not
        say). ``short_name`` is the name after the graph prefix (``x`` for a network whose
        ``construct`` takes ``x``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a readable MindIR protobuf.
    """
    from mindspore.train import mind_ir_pb2  # MindSpore's own MindIR schema

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"MindIR file {p} not found")
    model = mind_ir_pb2.ModelProto()
    try:
        model.ParseFromString(p.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{p}: not a readable MindIR file ({_first_line(exc)})") from exc
    names = {v: k for k, v in mind_ir_pb2.TensorProto.DataType.items()}
    graph = model.graph
    return {
        "path": str(p),
        "size_bytes": p.stat().st_size,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": str(model.ir_version),
        "inputs": [_value_info(v, names) for v in graph.input],
        "outputs": [_value_info(v, names) for v in graph.output],
        "parameters": len(graph.parameter),
    }
