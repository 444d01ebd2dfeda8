"""Framework-neutral weights: one safetensors file of numpy arrays both backends load.

Why this module is long: the docstring is the specification of the neutral format and of the
name map; the code is the format's reader, writer and strict checks, which must agree with
it.

The neutral format
==================

A neutral weights file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file
whose tensors are numpy arrays stored under the **PyTorch** ``state_dict`` names of the
network (``conv0_0.0.bn1.weight``, ``final.bias``, ...), C-contiguous, in the dtype the
network holds them (float32 for every registered network). Its header metadata (strings
only) holds:

================  ==========================================================
key               value
================  ==========================================================
``format``        ``irkd-neutral``
``format_version``  ``1`` (a reader refuses a newer version)
``network``       registry name (``dnanet_s``), when known
``source``        framework the arrays came from (``torch``, ``mindspore``)
``extra``         optional free-form JSON object (see :func:`extra_metadata`)
================  ==========================================================

A safetensors file without this metadata (written by another tool) still loads; its
names must then be PyTorch ``state_dict`` names.

``num_batches_tracked`` is not part of the format: BatchNorm uses a fixed momentum here, so
the counter is unused; MindSpore has no such buffer; and PyTorch's BatchNorm fills it in
when a state dict lacks it. The PyTorch side drops it on save and restores it on load.

The name map (PyTorch <-> MindSpore)
====================================

Parameter names are the same on both sides (``ms_impl`` and ``torch_ref`` mirror each other
attribute by attribute, and ``nn.Sequential`` / ``nn.SequentialCell`` both number their
children ``0, 1, ...``), except in BatchNorm layers:

============================  ==============================
PyTorch (``<bn>.`` + ...)      MindSpore (``<bn>.`` + ...)
============================  ==============================
``weight``                    ``gamma``
``bias``                      ``beta``
``running_mean``              ``moving_mean``
``running_var``               ``moving_variance``
``num_batches_tracked``       (none; dropped)
============================  ==============================

Only the leaves of BatchNorm layers are renamed; every other name passes unchanged (a
convolution's ``weight`` stays ``weight``). Which prefixes are BatchNorm layers is a property
of the network, not of the names, so :class:`NameMap` is built from the set of BatchNorm
module prefixes of the target network (``ms_impl.weights.bn_prefixes`` on the MindSpore
side). Renaming never hides a mismatch: loading compares the mapped names, shapes and dtypes
with the network and fails on any difference (:func:`check_strict`).

This module imports numpy and ``safetensors.numpy`` only; the framework sides live in
``torch_ref.weights`` and ``ms_impl.weights``, the converters that need both in
``parity.weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from irkd.files import atomic_path

__all__ = [
    "BN_TORCH_TO_MS",
    "BN_MS_TO_TORCH",
    "DROPPED_BUFFERS",
    "FORMAT",
    "FORMAT_VERSION",
    "ConversionReport",
    "NameMap",
    "Spec",
    "WeightsError",
    "check_finite",
    "check_strict",
    "extra_metadata",
    "load_neutral",
    "save_neutral",
    "sha256_file",
    "spec_of",
    "wrong_network",
]

FORMAT = "irkd-neutral"
FORMAT_VERSION = "1"

#: BatchNorm leaf names, PyTorch -> MindSpore.
BN_TORCH_TO_MS: dict[str, str] = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
#: BatchNorm leaf names, MindSpore -> PyTorch.
BN_MS_TO_TORCH: dict[str, str] = {v: k for k, v in BN_TORCH_TO_MS.items()}
#: PyTorch buffer leaves that the neutral format leaves out.
DROPPED_BUFFERS: tuple[str, ...] = ("num_batches_tracked",)

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
#: Names listed per kind of mismatch in a :func:`check_strict` message (the rest counted).
_LISTED = 8


class WeightsError(ValueError):
    """A weights file or weight dict that cannot be used: unreadable, or not fitting a network."""


class Spec(NamedTuple):
    """Expected shape (and optionally dtype) of one tensor.

    Attributes:
        shape: Expected shape.
        dtype: Expected numpy dtype name (``float32``); ``None`` skips the dtype check.
    """

    shape: tuple[int, ...]
    dtype: str | None = None


def spec_of(array: np.ndarray) -> Spec:
    """The :class:`Spec` (shape and dtype name) of an array."""
    return Spec(tuple(int(d) for d in array.shape), np.dtype(array.dtype).name)


@dataclass(frozen=True)
class ConversionReport:
    """What a file conversion did.

    Attributes:
        src: Source file.
        dst: Written file.
        tensors: Number of tensors written.
        dropped: Names present in the source but not written (optimizer state, counters).
        sha256: SHA-256 of the written file.
        network: Registry name of the network, when known.
    """

    src: Path
    dst: Path
    tensors: int
    dropped: tuple[str, ...] = field(default_factory=tuple)
    sha256: str = ""
    network: str | None = None

    def __str__(self) -> str:
        net = f" ({self.network})" if self.network else ""
        msg = f"{self.src} -> {self.dst}{net}: {self.tensors} tensors, sha256 {self.sha256[:12]}"
        if self.dropped:
            msg += f"; dropped {len(self.dropped)}: {_name_list(self.dropped, limit=12)}"
        return msg


class NameMap:
    """The PyTorch <-> MindSpore parameter-name map of one network.

    Built from the prefixes of the network's BatchNorm layers (``"conv0_0.0.bn1"``; ``""`` for
    a network that is itself a BatchNorm). Inside those layers the leaves are renamed as in
    :data:`BN_TORCH_TO_MS`; every other name is returned unchanged.

    Args:
        bn_prefixes: Module/cell names of the BatchNorm layers.
    """

    def __init__(self, bn_prefixes: Iterable[str]) -> None:
        self.bn_prefixes: frozenset[str] = frozenset(bn_prefixes)

    def __repr__(self) -> str:
        return f"NameMap({len(self.bn_prefixes)} BatchNorm layers)"

    @staticmethod
    def _split(name: str) -> tuple[str, str]:
        prefix, _, leaf = name.rpartition(".")
        return prefix, leaf

    def to_ms(self, name: str) -> str:
        """MindSpore name of a PyTorch ``state_dict`` name."""
        prefix, leaf = self._split(name)
        if prefix in self.bn_prefixes and leaf in BN_TORCH_TO_MS:
            return f"{prefix}.{BN_TORCH_TO_MS[leaf]}" if prefix else BN_TORCH_TO_MS[leaf]
        return name

    def to_torch(self, name: str) -> str:
        """PyTorch ``state_dict`` name of a MindSpore parameter name."""
        prefix, leaf = self._split(name)
        if prefix in self.bn_prefixes and leaf in BN_MS_TO_TORCH:
            return f"{prefix}.{BN_MS_TO_TORCH[leaf]}" if prefix else BN_MS_TO_TORCH[leaf]
        return name

    def dict_to_ms(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Rename the keys of a PyTorch-named dict to MindSpore names."""
        return self._rename(arrays, self.to_ms)

    def dict_to_torch(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Rename the keys of a MindSpore-named dict to PyTorch names."""
        return self._rename(arrays, self.to_torch)

    @staticmethod
    def _rename(arrays: Mapping[str, Any], fn: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in arrays.items():
            new = fn(name)
            if new in out:
                raise WeightsError(f"two tensors map to the same name {new!r} (one is {name!r})")
            out[new] = value
        return out


# --------------------------------------------------------------------------- checks


def _shape_str(shape: Iterable[int]) -> str:
    dims = [str(int(d)) for d in shape]
    return "(" + ",".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _name_list(names: Iterable[str], limit: int | None = None) -> str:
    names = list(names)
    if limit is not None and len(names) > limit:
        return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"
    return ", ".join(names)


def check_strict(
    expected: Mapping[str, Spec | tuple[int, ...]],
    arrays: Mapping[str, Any],
    *,
    what: str,
) -> None:
    """Fail unless ``arrays`` has exactly the expected names, shapes and dtypes.

    Args:
        expected: Name -> :class:`Spec` (or a bare shape tuple: no dtype check) of the network.
        arrays: Name -> array (anything with ``.shape`` and ``.dtype``) from the file.
        what: Start of the error message, e.g. ``"weights file x.safetensors does not fit
            dnanet_s"``.

    Raises:
        WeightsError: Counting the missing, unexpected, wrongly shaped and wrongly typed
            names in one message (the first few of each are named).
    """
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    bad_shape: list[str] = []
    bad_dtype: list[str] = []
    for name in sorted(set(expected) & set(arrays)):
        spec = expected[name]
        shape, dtype = (spec.shape, spec.dtype) if isinstance(spec, Spec) else (spec, None)
        arr = arrays[name]
        got_shape = tuple(int(d) for d in arr.shape)
        if got_shape != tuple(int(d) for d in shape):
            bad_shape.append(f"{name}: file {_shape_str(got_shape)} vs network {_shape_str(shape)}")
        elif dtype is not None and np.dtype(arr.dtype) != np.dtype(dtype):
            bad_dtype.append(
                f"{name}: file {np.dtype(arr.dtype).name} vs network {np.dtype(dtype).name}"
            )
    parts = []
    limit = _LISTED
    if missing:
        parts.append(f"missing {len(missing)} ({_name_list(missing, limit)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} ({_name_list(unexpected, limit)})")
    if bad_shape:
        parts.append(f"wrong shape {len(bad_shape)} ({_name_list(bad_shape, limit)})")
    if bad_dtype:
        parts.append(f"wrong dtype {len(bad_dtype)} ({_name_list(bad_dtype, limit)})")
    if parts:
        raise WeightsError(f"{what}: " + ", ".join(parts))


def check_finite(arrays: Mapping[str, Any], *, what: str) -> None:
    """Fail when a floating-point tensor holds NaN or infinity.

    Args:
        arrays: Name -> array (numpy, or anything ``numpy.asarray`` reads).
        what: Start of the error message, e.g. ``"weights file x.pt"``.

    Raises:
        WeightsError: Naming the tensors with non-finite values (the first few) and how many
            elements are affected.
    """
    bad: list[str] = []
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            bad.append(f"{name} ({n_bad} of {arr.size})")
    if bad:
        raise WeightsError(
            f"{what} holds NaN or infinite values in {len(bad)} tensor(s): "
            f"{_name_list(bad, _LISTED)}; such weights are refused (a diverged run? use an "
            "earlier checkpoint)"
        )


def wrong_network(path: str | os.PathLike[str], stored: str, wanted: str) -> WeightsError:
    """The one-line error for a weights file of another network than the one asked for.

    Used instead of :func:`check_strict`'s list of tensor names when the file's metadata
    names its network: ``dnanet_s`` against ``dnanet_xxs`` differs in every tensor, and the
    network name is what the user needs to see.
    """
    return WeightsError(
        f"weights file {path} holds a {stored!r} network (the name stored in the file), not "
        f"{wanted!r}: use weights of {wanted!r}, or set the network name to {stored!r}"
    )


# --------------------------------------------------------------------------- files


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate names and arrays for the neutral format; return C-contiguous arrays."""
    if not arrays:
        raise WeightsError("no tensors to save")
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise WeightsError(f"tensor names must be non-empty strings, got {name!r}")
        if name.rpartition(".")[2] in DROPPED_BUFFERS:
            raise WeightsError(
                f"{name}: {name.rpartition('.')[2]} is not part of the neutral format (drop it)"
            )
        if not isinstance(arr, np.ndarray):
            raise WeightsError(f"{name}: expected a numpy array, got {type(arr).__name__}")
        if arr.dtype.kind not in _NUMERIC_KINDS:
            raise WeightsError(f"{name}: unsupported dtype {arr.dtype}")
        # safetensors writes the raw buffer: a non-contiguous view would be saved scrambled.
        out[name] = np.ascontiguousarray(arr)
    return out


def save_neutral(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    *,
    network: str | None = None,
    source: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a neutral weights file atomically (temporary file in the same folder, then rename).

    Args:
        path: Destination (``.safetensors``).
        arrays: PyTorch ``state_dict`` name -> numpy array (without ``num_batches_tracked``).
        network: Registry name of the network, if known.
        source: Framework the arrays came from (``torch``, ``mindspore``).
        metadata: Free-form JSON-serialisable mapping, stored as a JSON string under ``extra``.

    Returns:
        The written path.

    Raises:
        WeightsError: On an invalid name, array or metadata.
    """
    path = Path(path)
    tensors = _check_arrays(arrays)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if network is not None:
        meta["network"] = str(network)
    if source is not None:
        meta["source"] = str(source)
    if metadata is not None:
        try:
            meta["extra"] = json.dumps(dict(metadata), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"metadata is not JSON-serialisable: {exc}") from None
    data = _canonical(_st_save(tensors, metadata=meta))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _canonical(data: bytes) -> bytes:
    """The same safetensors bytes with a deterministic header.

    The safetensors writer keeps the metadata in a hash map, so its key order (and with it
    the file's sha256) changes from one process to the next. The header is rewritten with
    the metadata keys sorted (tensor entries keep the writer's order, which is sorted
    already), compact JSON, and padded with spaces to a multiple of 8 bytes as the writer
    does; the data section is unchanged (its offsets are relative to the header's end).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered: dict[str, Any] = {}
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def _read_header(data: bytes, path: Path) -> dict[str, Any]:
    """Parse the safetensors JSON header (to read ``__metadata__``)."""
    if len(data) < 8:
        raise WeightsError(f"weights file {path} is not a safetensors file (only {len(data)} B)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise WeightsError(
            f"weights file {path} is not a safetensors file, or is truncated "
            f"(header of {n} B in a {len(data)} B file)"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights file {path} has a corrupt header: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"weights file {path} has a corrupt header (not a JSON object)")
    return header


def load_neutral(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a neutral weights file.

    Args:
        path: A ``.safetensors`` file.

    Returns:
        ``(arrays, metadata)``: PyTorch name -> numpy array (writable), and the header
        metadata (strings; empty for a file written by another tool).

    Raises:
        WeightsError: Naming the file when it is missing, unreadable, corrupt, of another
            format or of a newer format version.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} not found") from None
    except IsADirectoryError:
        raise WeightsError(
            f"weights path {path} is a folder, expected a .safetensors file"
        ) from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    header = _read_header(data, path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsError(f"weights file {path} has corrupt metadata")
    fmt = meta.get("format")
    if fmt is not None and fmt != FORMAT:
        raise WeightsError(f"weights file {path} has format {fmt!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if version is not None and (not version.isdigit() or int(version) > int(FORMAT_VERSION)):
        raise WeightsError(
            f"weights file {path} has format version {version!r}; this code reads up to "
            f"{FORMAT_VERSION}"
        )
    try:
        arrays = _st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (and others)
        raise WeightsError(f"weights file {path} is corrupt or truncated: {exc}") from None
    return dict(arrays), dict(meta)


def extra_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The free-form ``extra`` dict of a file's metadata (``{}`` when absent)."""
    raw = metadata.get("extra")
    if not raw:
        return {}
    try:
        out = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WeightsError(f"metadata 'extra' is not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise WeightsError("metadata 'extra' is not a JSON object")
    return out


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except FileNotFoundError:
        raise WeightsError(f"file {path} not found") from None
    return h.hexdigest()
