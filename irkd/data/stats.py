"""Dataset statistics used for input normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from irkd.data.dataset import IRSTDDataset
from irkd.data.errors import DatasetError
from irkd.data.io import read_gray, read_mask

__all__ = ["compute_mean_std", "require_targets", "verify_split"]


def require_targets(dataset: IRSTDDataset, ids: Sequence[str] | None = None) -> str:
    """Fail unless at least one mask of the split holds a target pixel.

    Reads masks in order and stops at the first target (normally the first mask), so it is
    cheap on a good split. ``irkd data check`` reports the same condition as a warning;
    training and evaluation should call this at start: a split without targets trains
    nothing and scores IoU nan (a 16-bit or label mask once read as empty did exactly that).

    Args:
        dataset: The split.
        ids: Restrict to these ids (e.g. the training ids without the validation part).

    Returns:
        The first id with a target.

    Raises:
        DatasetError: Naming the split, its folder and how many masks were read.
    """
    ids = dataset.ids if ids is None else list(ids)
    for id_ in ids:
        if read_mask(dataset.mask_path(id_)).any():
            return id_
    raise DatasetError(
        f"split {dataset.split!r} of {dataset.root} has no target at all: none of its "
        f"{len(ids)} masks holds a target pixel (check the mask files: `irkd data check "
        f"{dataset.root}`)"
    )


def verify_split(dataset: IRSTDDataset, ids: Sequence[str] | None = None) -> tuple[int, int]:
    """Decode every image and mask of a split once, so a broken file fails at start.

    Training and evaluation call this before anything is written: a corrupt test mask
    otherwise surfaces after hours of training, in the final report.

    Args:
        dataset: The split.
        ids: Restrict to these ids.

    Returns:
        The largest image height and width of the split (for the crop size check).

    Raises:
        DatasetError: Naming the file that cannot be read.
    """
    top_h = top_w = 0
    for id_ in dataset.ids if ids is None else ids:
        sample = dataset.load(id_)
        top_h, top_w = max(top_h, sample.image.shape[0]), max(top_w, sample.image.shape[1])
    return top_h, top_w


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
