"""Score saved prediction maps (one 8-bit PNG per image) against a dataset split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irkd.data import IRSTDDataset
from irkd.data.io import read_gray
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

    Each prediction file is read as 8-bit grayscale (colour files are converted, 16-bit ones
    scaled to 8 bits) and ``value / 255`` is its probability, so with the default threshold
    (``prob > 0.5``) values >= 128 are targets, and 0/255 binary masks work as they are. It
    must have the size of its image (the GT mask is resized to the image when its file
    differs, as the dataset reader does). All files are checked to exist before any is read.

    Args:
        pred_dir: Folder of prediction maps named by image id.
        data_root: Dataset folder (see ``irkd.data.IRSTDDataset``).
        split: Split name, e.g. "test".
        threshold: Operating threshold on the probability.
        layout: Dataset layout: "auto", "irkd" or "basicirstd".
        max_dist: Centroid matching radius in pixels.
        roc_thresholds: ROC thresholds (default ``DEFAULT_ROC_THRESHOLDS``).

    Returns:
        ``IRSTDMetrics.compute()``'s dict plus ``roc`` (``IRSTDMetrics.roc()``), ``dataset``
        (the root path), ``split``, ``layout`` (resolved), ``pred_dir`` and ``count`` (images
        scored).

    Raises:
        PredictionError: The folder is missing, files are missing (the count and the first
            few are named), or a file's size differs from its mask's.
        irkd.data.DatasetError: The dataset split cannot be read.

    """
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
    metrics = IRSTDMetrics(threshold=threshold, max_dist=max_dist, roc_thresholds=roc_thresholds)
    for index, path in enumerate(paths):
        sample = ds[index]
        pred = read_gray(path)
        if pred.shape != sample.mask.shape:
            h, w = pred.shape
            mh, mw = sample.mask.shape
            raise PredictionError(
                f"prediction {path} is {w}x{h} (WxH) but the mask of {sample.id} "
                f"({ds.mask_path(sample.id)}, at its image's size) is {mw}x{mh}: save the "
                "prediction at the image's native size"
            )
        # float64: value / 255 lands on the same double as the threshold t where v = 255 t
        metrics.update(pred / 255.0, sample.mask)
    result: dict[str, Any] = dict(metrics.compute())
    result.update(
        roc=metrics.roc(),
        dataset=str(ds.root),
        split=split,
        layout=ds.layout,
        pred_dir=str(pred_root),
        count=len(paths),
    )
    return result
