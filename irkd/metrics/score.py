"""Score saved prediction maps (one PNG per image, 8- or 16-bit) against a dataset split."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from irkd.data import DatasetError, IRSTDDataset
from irkd.data.io import read_gray_native, value_range
from irkd.metrics.irstd import IRSTDMetrics

__all__ = ["PredictionError", "score_predictions"]

_SHOWN = 5  # missing files listed in an error message


class PredictionError(ValueError):
    """A prediction folder or file that cannot be scored; the message names the file."""


def score_predictions(
    pred_dir: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    split: str = "test",
    *,
    threshold: float = 0.5,
    layout: str = "auto",
    max_dist: float = 3.0,
    roc_thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Score ``<pred_dir>/<id>.png`` for every id of a dataset split.

    Each prediction file is read as grayscale at its own depth (colour files are converted)
    and ``value / range`` is its probability, where ``range`` is the value range the folder's
    files use, per pixel type (:func:`irkd.data.io.value_range` of their largest value): 255
    for 8-bit maps (1 when every 8-bit file holds only 0 and 1: label images), and for 16-bit
    maps 65535, 255 or 1 likewise. So 0/255 and 0/1 binary maps work whether saved as 8 or 16
    bits, and with the default threshold (``prob > 0.5``) 8-bit values >= 128 are targets. The
    range is decided over the whole folder, not per file: an image without any detection
    (every value 0 or 1 in a soft map) keeps the folder's range. The ranges used are
    returned as ``pred_range``. Each file must have the size of its image (the GT mask is
    resized to the image when its file differs, as the dataset reader does). All files are
    checked to exist before any is read.

    Args:
        pred_dir: Folder of prediction maps named by image id.
        data_root: Dataset folder (see ``irkd.data.IRSTDDataset``).
        split: Split name, e.g. "test".
        threshold: Operating threshold on the probability, in (0, 1).
        layout: Dataset layout: "auto", "irkd" or "basicirstd".
        max_dist: Centroid matching radius in pixels.
        roc_thresholds: ROC thresholds (default ``DEFAULT_ROC_THRESHOLDS``).

    Returns:
        ``IRSTDMetrics.compute()``'s dict plus ``roc`` (``IRSTDMetrics.roc()``), ``dataset``
        (the root path), ``split``, ``layout`` (resolved), ``pred_dir`` and ``count`` (images
        scored).

    Raises:
        PredictionError: The threshold is not in (0, 1), the folder is missing, files are
            missing (the count and the first few are named), a file cannot be decoded, or a
            file's size differs from its mask's.
        irkd.data.DatasetError: The dataset split cannot be read.

    """
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float) and math.isfinite(threshold) and 0 < threshold < 1
    ):
        raise PredictionError(
            f"threshold {threshold!r} is not a probability in (0, 1) (--threshold): a "
            "prediction pixel is a target where value / range > threshold"
        )
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise PredictionError(f"prediction folder {pred_root} not found or not a folder")
    ds = IRSTDDataset(data_root, split, layout=layout)
    paths = [pred_root / f"{i}.png" for i in ds.ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOWN])
        more = ", ..." if len(missing) > _SHOWN else ""
        raise PredictionError(
            f"{len(missing)} of the {len(paths)} prediction files of split {split!r} of "
            f"{ds.root} are missing from {pred_root}: {shown}{more}"
        )
    tops: dict[str, float] = {}
    for path in paths:  # first pass: the value range of the folder, per pixel type
        pred = _read_prediction(path)
        top = float(np.nanmax(pred)) if pred.size else 0.0
        tops[pred.dtype.name] = max(tops.get(pred.dtype.name, 0.0), top)
    ranges = {
        dtype: 255.0 if dtype == "uint8" and top > 1.0 else value_range(top)
        for dtype, top in tops.items()
    }
    metrics = IRSTDMetrics(threshold=threshold, max_dist=max_dist, roc_thresholds=roc_thresholds)
    for index, path in enumerate(paths):
        sample = ds[index]
        pred = _read_prediction(path)
        if pred.shape != sample.mask.shape:
            h, w = pred.shape
            mh, mw = sample.mask.shape
            raise PredictionError(
                f"prediction {path} is {w}x{h} (WxH) but the mask of {sample.id} "
                f"({ds.mask_path(sample.id)}, at its image's size) is {mw}x{mh}: save the "
                "prediction at the image's native size"
            )
        # float64: value / 255 lands on the same double as the threshold t where v = 255 t
        metrics.update(pred / ranges[pred.dtype.name], sample.mask)
    result: dict[str, Any] = dict(metrics.compute())
    result.update(
        roc=metrics.roc(),
        dataset=str(ds.root),
        split=split,
        layout=ds.layout,
        pred_dir=str(pred_root),
        count=len(paths),
        pred_range=ranges,
    )
    return result


def _read_prediction(path: Path) -> np.ndarray:
    """A prediction map at its own depth; PredictionError naming the file when unreadable."""
    try:
        return read_gray_native(path, "prediction")
    except DatasetError as exc:
        raise PredictionError(
            f"prediction file {path} cannot be read: {_reason(exc)}; re-save it (a PNG of the "
            "image's size, 8- or 16-bit grayscale)"
        ) from None


def _reason(exc: DatasetError) -> str:
    text = str(exc)
    if "cannot be decoded" in text:
        return "empty, corrupt or not an image"
    return text.split(": ", 1)[-1] if ": " in text else text
