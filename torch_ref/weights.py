"""PyTorch side of the neutral weights (see :mod:`irkd.weights` for the format).

The neutral names are the PyTorch ``state_dict`` names, so no renaming happens here; the
only difference is ``num_batches_tracked``, dropped on save and restored on load (kept at
the model's current value, as PyTorch itself does for a state dict that lacks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irkd.files import atomic_path
from irkd.weights import (
    DROPPED_BUFFERS,
    ConversionReport,
    Spec,
    WeightsError,
    check_finite,
    check_strict,
    load_neutral,
    save_neutral,
    sha256_file,
)

__all__ = [
    "expected_specs",
    "load_neutral_net",
    "neutral_to_pt",
    "pt_to_neutral",
    "read_pt",
    "save_neutral_net",
    "net_to_neutral",
    "write_pt",
]

SOURCE = "torch"


def _is_dropped(name: str) -> bool:
    return name.rpartition(".")[2] in DROPPED_BUFFERS


def _to_numpy(name: str, tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy copy of a tensor (exact bits)."""
    if not isinstance(tensor, torch.Tensor):
        raise WeightsError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        raise WeightsError(f"{name}: bfloat16 has no numpy dtype; convert to float32 first")
    return np.ascontiguousarray(t.numpy()).copy()


def net_to_neutral(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Neutral arrays of a model (or of a state dict): numpy copies, no ``num_batches_tracked``.

    Args:
        model: A module, or a ``state_dict``-like mapping of tensors.

    Returns:
        PyTorch name -> C-contiguous numpy array.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return {k: _to_numpy(k, v) for k, v in state.items() if not _is_dropped(k)}


def expected_specs(model: nn.Module) -> dict[str, Spec]:
    """Name -> :class:`~irkd.weights.Spec` of a model's neutral tensors."""
    return {
        k: Spec(tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
        if not _is_dropped(k)
    }


def save_neutral_net(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model's weights as a neutral file.

    Args:
        model: The network.
        path: Destination ``.safetensors``.
        name: Registry name of the network (stored in the metadata).
        metadata: Free-form JSON-serialisable extras.

    Returns:
        The written path.
    """
    return save_neutral(path, net_to_neutral(model), network=name, source=SOURCE, metadata=metadata)


def _describe(src: str | os.PathLike[str] | Mapping[str, np.ndarray]) -> str:
    return "weights" if isinstance(src, Mapping) else f"weights file {Path(src).name}"


def load_neutral_net(
    model: nn.Module,
    src: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    network: str | None = None,
) -> dict[str, str]:
    """Load neutral weights into a model, strictly and bit-exactly.

    Every name, shape and dtype must match the model (``num_batches_tracked`` aside, which
    keeps the model's current value); the model is left untouched when they do not.

    Args:
        model: The network to fill.
        src: A neutral file, or a name -> array mapping.
        network: Name used in error messages (defaults to the file's metadata, else the
            model's class name).

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
    label = network or meta.get("network") or type(model).__name__
    check_strict(expected_specs(model), arrays, what=f"{_describe(src)} does not fit {label}")
    current = model.state_dict()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    for k, v in current.items():
        if _is_dropped(k):
            state[k] = v.detach().clone()
    model.load_state_dict(state, strict=True)
    return meta


# --------------------------------------------------------------------------- .pt files


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state dict inside a loaded .pt object (plain, or under "state_dict"/"model")."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise WeightsError(
        f"{path} holds no state dict (expected a name -> tensor mapping, or one under "
        f"'state_dict' or 'model'); found {type(obj).__name__}"
    )


def read_pt(pt_path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read a PyTorch state-dict file (``torch.load(weights_only=True)``) as neutral arrays.

    Accepts a plain state dict or a checkpoint dict with the state dict under
    ``"state_dict"`` or ``"model"``; a ``module.`` prefix on every name (``DataParallel``) is
    removed.

    Args:
        pt_path: ``.pt`` / ``.pth`` file.

    Returns:
        ``(arrays, dropped)``: the neutral arrays and the names left out
        (``num_batches_tracked`` entries).

    Raises:
        WeightsError: Naming the file when it is missing, unreadable or holds no state dict.
    """
    path = Path(pt_path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of all kinds
        raise WeightsError(f"cannot read PyTorch weights file {path}: {exc}") from None
    state = dict(_unwrap(obj, path))
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: entries that are not tensors: {', '.join(sorted(bad))}")
    dropped = sorted(k for k in state if _is_dropped(k))
    return net_to_neutral(state), dropped


def write_pt(
    arrays: Mapping[str, np.ndarray],
    out_path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
) -> Path:
    """Write neutral arrays as a plain PyTorch state-dict file, atomically.

    Args:
        arrays: Neutral arrays.
        out_path: Destination ``.pt`` / ``.pth``.
        model: When given, the arrays are checked strictly against it and its
            ``num_batches_tracked`` buffers are added, so the file loads with
            ``load_state_dict(strict=True)`` under any state-dict version.

    Returns:
        The written path.
    """
    out_path = Path(out_path)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).clone() for k, v in arrays.items()}
    if model is not None:
        check_strict(
            expected_specs(model), arrays, what=f"weights do not fit {type(model).__name__}"
        )
        full = {}
        for k, v in model.state_dict().items():
            full[k] = v.detach().clone() if _is_dropped(k) else state[k]
        state = full
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)
    return out_path


def pt_to_neutral(
    pt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    name: str | None = None,
) -> ConversionReport:
    """Convert a PyTorch state-dict file to a neutral file.

    Args:
        pt_path: ``.pt`` / ``.pth`` source (see :func:`read_pt`).
        out_path: ``.safetensors`` destination.
        model: When given, the weights are checked strictly against it first.
        name: Registry name of the network (stored in the metadata).

    Returns:
        What was written and dropped.
    """
    arrays, dropped = read_pt(pt_path)
    if model is not None:
        check_strict(
            expected_specs(model),
            arrays,
            what=f"weights file {Path(pt_path).name} does not fit {name or type(model).__name__}",
        )
    check_finite(arrays, what=f"weights file {pt_path}")
    save_neutral(out_path, arrays, network=name, source=SOURCE)
    return ConversionReport(
        Path(pt_path), Path(out_path), len(arrays), tuple(dropped), sha256_file(out_path), name
    )


def neutral_to_pt(
    neutral_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
) -> ConversionReport:
    """Convert a neutral file to a plain PyTorch state-dict file.

    Args:
        neutral_path: ``.safetensors`` source.
        out_path: ``.pt`` / ``.pth`` destination.
        model: When given, the weights are checked strictly against it and the file gets
            its ``num_batches_tracked`` buffers (see :func:`write_pt`).

    Returns:
        What was written.
    """
    arrays, meta = load_neutral(neutral_path)
    if model is not None:
        label = meta.get("network") or type(model).__name__
        check_strict(
            expected_specs(model),
            arrays,
            what=f"weights file {Path(neutral_path).name} does not fit {label}",
        )
    check_finite(arrays, what=f"weights file {neutral_path}")
    write_pt(arrays, out_path, model=model)
    return ConversionReport(
        Path(neutral_path),
        Path(out_path),
        len(arrays),
        (),
        sha256_file(out_path),
        meta.get("network"),
    )
