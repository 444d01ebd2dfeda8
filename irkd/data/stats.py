"""Dataset statistics used for input normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from irkd.data.dataset import IRSTDDataset
from irkd.data.errors import DatasetError
from irkd.data.io import read_gray

__all__ = ["compute_mean_std"]


def compute_mean_std(
    dataset: IRSTDDataset, ids: Sequence[str] | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of all pixels of all images of a split.

    Sums are exact (integer), so the result does not depend on the image order.

    Args:
        dataset: The split (normally the training split).
        ids: Restrict to these ids (default: all ids of the split).

    Returns:
        (mean, std) in 0..255 units; std is the population standard deviation.

    Raises:
        DatasetError: No pixels, or an unreadable image.

    """
    ids = dataset.ids if ids is None else list(ids)
    count = 0
    total = 0
    total_sq = 0
    for id_ in tqdm(ids, desc=f"mean/std {dataset.name}", unit="img", leave=False, disable=None):
        image = read_gray(dataset.image_path(id_))
        hist = np.bincount(image.ravel(), minlength=256).astype(np.int64)
        levels = np.arange(256, dtype=np.int64)
        count += int(hist.sum())
        total += int(hist @ levels)
        total_sq += int(hist @ (levels * levels))
    if count == 0:
        raise DatasetError(f"no pixels to compute mean/std from in {dataset.split_file}")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return float(mean), float(math.sqrt(var))
