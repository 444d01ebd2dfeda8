"""Weight converters that need both frameworks, through the neutral arrays.

``torch_to_ms`` / ``ms_to_torch`` copy weights between live networks in memory;
``convert`` converts files by suffix:

==================  =====================================
suffix              format
==================  =====================================
``.safetensors``    neutral (:mod:`irkd.weights`)
``.pt``, ``.pth``   PyTorch state dict (``torch.save``)
``.ckpt``           MindSpore checkpoint
==================  =====================================

Every conversion is checked strictly against the registered network, built on the side(s)
the two formats need, and is bit-exact.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from irkd.weights import (
    ConversionReport,
    WeightsError,
    check_finite,
    check_strict,
    load_neutral,
    save_neutral,
)
from irkd.weights import sha256_file as _sha256
from ms_impl import weights as msw
from torch_ref import weights as tw

__all__ = ["FORMATS", "convert", "convert_files", "file_format", "ms_to_torch", "torch_to_ms"]

#: Suffix -> format name.
FORMATS: dict[str, str] = {
    ".safetensors": "neutral",
    ".pt": "pt",
    ".pth": "pt",
    ".ckpt": "ckpt",
}


def torch_to_ms(model: Any, net: Any) -> None:
    """Copy a PyTorch model's weights into the twin MindSpore network (strict, bit-exact)."""
    msw.load_neutral_net(net, tw.net_to_neutral(model))


def ms_to_torch(net: Any, model: Any) -> None:
    """Copy a MindSpore network's weights into the twin PyTorch model (strict, bit-exact)."""
    tw.load_neutral_net(model, msw.net_to_neutral(net))


def file_format(path: str | os.PathLike[str]) -> str:
    """``neutral``, ``pt`` or ``ckpt`` from a file's suffix; WeightsError otherwise."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise WeightsError(
            f"{path}: unknown weights format {suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(FORMATS)}"
        ) from None


def convert_files(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: Any = None,
    net: Any = None,
    network: str | None = None,
) -> ConversionReport:
    """Convert a weights file given the already-built network(s).

    Args:
        src: Source file (format by suffix, see :data:`FORMATS`).
        dst: Destination file (format by suffix); may not be ``src``.
        model: The PyTorch network; needed when either side is ``.pt``/``.pth``, and used to
            check a neutral-to-neutral copy.
        net: The MindSpore network; needed when either side is ``.ckpt``.
        network: Registry name (metadata and messages).

    Returns:
        What was written and what was dropped.

    Raises:
        WeightsError: On an unknown suffix, a missing network, an unreadable source,
            weights that do not fit the network, or NaN/Inf values (nothing is written).
    """
    src, dst = Path(src), Path(dst)
    kind_src, kind_dst = file_format(src), file_format(dst)
    if src.resolve() == dst.resolve():
        raise WeightsError(f"source and destination are the same file: {src}")
    kinds = {kind_src, kind_dst}
    if "ckpt" in kinds and net is None:
        raise WeightsError("a MindSpore network is needed to convert a .ckpt file")
    if "pt" in kinds and model is None:
        raise WeightsError("a PyTorch model is needed to convert a .pt/.pth file")
    if model is None and net is None:
        raise WeightsError("a network (PyTorch or MindSpore) is needed to check the weights")
    label = network or type(model if model is not None else net).__name__
    what = f"weights file {src.name} does not fit {label}"

    dropped: list[str] = []
    source: str | None
    if kind_src == "pt":
        arrays, dropped = tw.read_pt(src)
        source = tw.SOURCE
    elif kind_src == "ckpt":
        arrays, dropped = msw.read_ckpt(src, net, network=label)
        source = msw.SOURCE
    else:
        arrays, meta = load_neutral(src)
        source = meta.get("source")
        if network and meta.get("network") and meta["network"] != network:
            warnings.warn(
                f"{src} was saved for {meta['network']!r}, converting as {network!r}",
                stacklevel=2,
            )
    if model is not None:
        check_strict(tw.expected_specs(model), arrays, what=what)
    if net is not None:
        check_strict(msw.expected_specs(net), arrays, what=what)
    check_finite(arrays, what=f"weights file {src}")

    if kind_dst == "pt":
        tw.write_pt(arrays, dst, model=model)
    elif kind_dst == "ckpt":
        msw.write_ckpt(arrays, dst, net, network=label)
    else:
        save_neutral(dst, arrays, network=network, source=source)
    return ConversionReport(src, dst, len(arrays), tuple(dropped), _sha256(dst), network)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    network: str,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """Convert a weights file of a registered network, by suffixes.

    Builds the registered network on the side(s) the two formats need (PyTorch for
    ``.pt``/``.pth`` and for a neutral-to-neutral check, MindSpore for ``.ckpt``) and checks
    the weights against it strictly.

    Args:
        src: Source file (``.safetensors``, ``.pt``/``.pth`` or ``.ckpt``).
        dst: Destination file (same choice of suffixes).
        network: Registry name (``irkd.zoo.MODELS``).
        model_kwargs: Overrides of the registered constructor keyword arguments.

    Returns:
        What was written and what was dropped.
    """
    kinds = {file_format(src), file_format(dst)}
    kw = dict(model_kwargs or {})
    model = net = None
    if "pt" in kinds or kinds == {"neutral"}:
        from torch_ref.models import create_model as create_torch

        model = create_torch(network, **kw)
    if "ckpt" in kinds:
        from ms_impl.models import create_model as create_ms

        net = create_ms(network, **kw)
    return convert_files(src, dst, model=model, net=net, network=network)
