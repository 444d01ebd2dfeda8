"""MindSpore side of the neutral weights (see :mod:`irkd.weights` for the format and name map).

Neutral files use PyTorch ``state_dict`` names. MindSpore names differ only inside BatchNorm
layers (``gamma``/``beta``/``moving_mean``/``moving_variance``), and which cells are
BatchNorm layers is read off the network itself (:func:`bn_prefixes`), so every function that
maps names takes the target network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from irkd.files import atomic_path
from irkd.weights import (
    ConversionReport,
    NameMap,
    Spec,
    WeightsError,
    check_finite,
    check_strict,
    load_neutral,
    save_neutral,
    sha256_file,
)

__all__ = [
    "assign_neutral",
    "bn_prefixes",
    "ckpt_to_neutral",
    "expected_specs",
    "load_neutral_net",
    "name_map",
    "net_to_neutral",
    "neutral_to_ckpt",
    "read_ckpt",
    "save_neutral_net",
    "write_ckpt",
]

SOURCE = "mindspore"

# Cells whose affine parameters MindSpore names gamma/beta where PyTorch says weight/bias:
# BatchNorm (plus moving statistics) and LayerNorm (FGD's context blocks). BatchNorm3d wraps a
# BatchNorm2d (``<bn>.bn2d.gamma``), which has no PyTorch twin: left out.
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm)


def bn_prefixes(net: nn.Cell) -> set[str]:
    """Parameter-name prefixes of the network's BatchNorm cells (``"conv0_0.0.bn1"``).

    Walks ``net.cells_and_names()``; the prefix is read off each BatchNorm's own ``gamma``
    parameter, so it matches the parameter names (what checkpoints store) even when ``net``
    is a wrapper (``WithLossCell``) whose cell paths carry an extra prefix.
    """
    out: set[str] = set()
    for _, cell in net.cells_and_names():
        if isinstance(cell, _BN_TYPES):
            prefix, _, leaf = cell.gamma.name.rpartition(".")
            if leaf != "gamma":  # a parameter renamed by hand: the map cannot be derived
                raise WeightsError(f"unexpected BatchNorm parameter name {cell.gamma.name!r}")
            out.add(prefix)
    return out


def name_map(net: nn.Cell) -> NameMap:
    """The PyTorch <-> MindSpore :class:`~irkd.weights.NameMap` of a network."""
    return NameMap(bn_prefixes(net))


def _np_dtype(param: ms.Parameter) -> str:
    """Numpy dtype name of a parameter (``Float32`` -> ``float32``), without copying its data."""
    name = str(param.dtype).lower()
    try:
        return np.dtype(name).name
    except TypeError:
        raise WeightsError(f"{param.name}: dtype {param.dtype} has no numpy equivalent") from None


def expected_specs(net: nn.Cell, *, torch_names: bool = True) -> dict[str, Spec]:
    """Name -> :class:`~irkd.weights.Spec` of the network's parameters.

    Args:
        net: The network.
        torch_names: Key by PyTorch (neutral) names; ``False`` keys by MindSpore names.
    """
    nm = name_map(net) if torch_names else None
    return {
        (nm.to_torch(name) if nm else name): Spec(tuple(int(d) for d in p.shape), _np_dtype(p))
        for name, p in net.parameters_dict().items()
    }


def net_to_neutral(net: nn.Cell) -> dict[str, np.ndarray]:
    """Neutral arrays of a network: numpy copies under PyTorch names."""
    return name_map(net).dict_to_torch(
        {
            name: np.ascontiguousarray(p.asnumpy()).copy()
            for name, p in net.parameters_dict().items()
        }
    )


def save_neutral_net(
    net: nn.Cell,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a network's weights as a neutral file.

    Args:
        net: The network.
        path: Destination ``.safetensors``.
        name: Registry name of the network (stored in the metadata).
        metadata: Free-form JSON-serialisable extras.

    Returns:
        The written path.
    """
    return save_neutral(path, net_to_neutral(net), network=name, source=SOURCE, metadata=metadata)


def _describe(src: Any) -> str:
    return "weights" if isinstance(src, Mapping) else f"weights file {Path(src).name}"


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def load_neutral_net(
    net: nn.Cell,
    src: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    network: str | None = None,
) -> dict[str, str]:
    """Load neutral weights into a network, strictly and bit-exactly.

    Names are mapped to MindSpore names (:func:`name_map`); names, shapes and dtypes must
    match the network's parameters exactly (the network is left untouched otherwise). Each
    parameter's data is then replaced (``Parameter.set_data``) and read back to confirm that
    every one holds the file's exact bits.

    Args:
        net: The network to fill.
        src: A neutral file, or a name -> array mapping (PyTorch names).
        network: Name used in error messages (defaults to the file's metadata, else the
            network's class name).

    Returns:
        The file's metadata (empty for an in-memory mapping).

    Raises:
        WeightsError: On any missing, unexpected, wrongly shaped or typed tensor.
    """
    meta: dict[str, str]
    if isinstance(src, Mapping):
        arrays, meta = dict(src), {}
    else:
        arrays, meta = load_neutral(src)
    label = network or meta.get("network") or type(net).__name__
    check_strict(expected_specs(net), arrays, what=f"{_describe(src)} does not fit {label}")
    nm = name_map(net)
    params = net.parameters_dict()
    for torch_name, arr in arrays.items():
        params[nm.to_ms(torch_name)].set_data(ms.Tensor(np.ascontiguousarray(arr)))
    wrong = [
        name
        for name in arrays
        if not _same_bits(params[nm.to_ms(name)].asnumpy(), np.ascontiguousarray(arrays[name]))
    ]
    if wrong:  # pragma: no cover - a MindSpore regression, not a user error
        raise WeightsError(f"parameters not loaded bit-exactly: {', '.join(sorted(wrong))}")
    return meta


# --------------------------------------------------------------------------- .ckpt files


def read_ckpt(
    ckpt_path: str | os.PathLike[str], net: nn.Cell, *, network: str | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read a network's parameters out of a MindSpore checkpoint, as neutral arrays.

    Only the network's parameters are taken; other entries (optimizer moments,
    ``global_step``, ``learning_rate``, ...) are left out and returned by name.

    Args:
        ckpt_path: ``.ckpt`` file.
        net: The network the checkpoint belongs to (gives names, shapes and BN layers).
        network: Name used in error messages.

    Returns:
        ``(arrays, dropped)``: neutral arrays (PyTorch names) and the checkpoint names left out.

    Raises:
        WeightsError: Naming the file when it is missing or corrupt, or lacks a parameter of
            the network, or holds one with the wrong shape or dtype.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file {path} not found")
    try:
        ckpt = ms.load_checkpoint(str(path))
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError for bad files
        raise WeightsError(f"cannot read checkpoint file {path}: {exc}") from None
    params = net.parameters_dict()
    taken = {name: np.ascontiguousarray(ckpt[name].asnumpy()) for name in params if name in ckpt}
    dropped = sorted(set(ckpt) - set(params))
    label = network or type(net).__name__
    check_strict(
        expected_specs(net, torch_names=False),
        taken,
        what=f"checkpoint file {path.name} does not fit {label}",
    )
    return name_map(net).dict_to_torch(taken), dropped


def write_ckpt(
    arrays: Mapping[str, np.ndarray],
    out_path: str | os.PathLike[str],
    net: nn.Cell,
    *,
    network: str | None = None,
) -> Path:
    """Write neutral arrays as a MindSpore checkpoint, atomically, without touching ``net``.

    Args:
        arrays: Neutral arrays (PyTorch names).
        out_path: Destination ``.ckpt``.
        net: The network the weights belong to (names, shapes, BN layers).
        network: Name used in error messages.

    Returns:
        The written path.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".ckpt":
        raise WeightsError(f"{out_path}: a MindSpore checkpoint must end in .ckpt")
    check_strict(
        expected_specs(net),
        arrays,
        what=f"weights do not fit {network or type(net).__name__}",
    )
    nm = name_map(net)
    by_ms = {nm.to_ms(k): v for k, v in arrays.items()}
    entries = [
        {"name": name, "data": ms.Tensor(np.ascontiguousarray(by_ms[name]))}
        for name in net.parameters_dict()
    ]
    with atomic_path(out_path) as tmp:
        ms.save_checkpoint(entries, str(tmp))
    return out_path


def ckpt_to_neutral(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    net: nn.Cell,
    *,
    name: str | None = None,
) -> ConversionReport:
    """Convert a MindSpore checkpoint to a neutral file (network parameters only).

    Args:
        ckpt_path: ``.ckpt`` source.
        out_path: ``.safetensors`` destination.
        net: The network the checkpoint belongs to.
        name: Registry name of the network (metadata and messages).

    Returns:
        What was written, and the checkpoint entries dropped (optimizer state, counters).
    """
    arrays, dropped = read_ckpt(ckpt_path, net, network=name)
    check_finite(arrays, what=f"weights file {ckpt_path}")
    save_neutral(out_path, arrays, network=name, source=SOURCE)
    return ConversionReport(
        Path(ckpt_path), Path(out_path), len(arrays), tuple(dropped), sha256_file(out_path), name
    )


def neutral_to_ckpt(
    neutral_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    net: nn.Cell,
) -> ConversionReport:
    """Convert a neutral file to a MindSpore checkpoint of ``net``'s parameters.

    Args:
        neutral_path: ``.safetensors`` source.
        out_path: ``.ckpt`` destination.
        net: The network the weights belong to (not modified).

    Returns:
        What was written.
    """
    arrays, meta = load_neutral(neutral_path)
    label = meta.get("network") or type(net).__name__
    check_strict(
        expected_specs(net),
        arrays,
        what=f"weights file {Path(neutral_path).name} does not fit {label}",
    )
    check_finite(arrays, what=f"weights file {neutral_path}")
    write_ckpt(arrays, out_path, net, network=label)
    return ConversionReport(
        Path(neutral_path),
        Path(out_path),
        len(arrays),
        (),
        sha256_file(out_path),
        meta.get("network"),
    )


def assign_neutral(
    net: nn.Cell, src: str | os.PathLike[str], *, network: str | None = None
) -> None:
    """Load a neutral weights file into ``net`` strictly, in place (``ops.assign``).

    The same checks as :func:`ms_impl.weights.load_neutral_net` (names, shapes, dtypes), but
    each parameter keeps its storage, so graphs compiled before see the new values.

    Raises:
        WeightsError: A missing/extra/mis-shaped tensor, or an unreadable file.
    """
    arrays, _ = load_neutral(src)
    check_strict(
        expected_specs(net),
        arrays,
        what=f"weights file {Path(src).name} does not fit {network or type(net).__name__}",
    )
    nm = name_map(net)
    params = net.parameters_dict()
    for torch_name, arr in arrays.items():
        ops.assign(params[nm.to_ms(torch_name)], ms.Tensor(np.array(arr, order="C", copy=True)))
