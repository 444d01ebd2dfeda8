"""Batches for training and per-image arrays for evaluation (numpy only).

The arrays are NCHW float32 so that both MindSpore and PyTorch take them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from irkd.data.dataset import IRSTDDataset
from irkd.data.transforms import TrainAugment, normalize, pad_to_multiple

__all__ = ["TrainBatches", "iter_eval", "split_train_val"]


def split_train_val(
    ids: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split ids into disjoint train and validation lists, deterministically.

    The validation part has ``round(len(ids) * val_fraction)`` ids, at least 1 (when
    ``val_fraction > 0`` and there are >= 2 ids) and at most ``len(ids) - 1``. Both lists
    keep the input order.

    Args:
        ids: Ids to split (no duplicates).
        val_fraction: Fraction for validation, in [0, 1).
        seed: Seed of the random choice.

    Returns:
        (train_ids, val_ids).

    Raises:
        ValueError: ``val_fraction`` out of range, or duplicated ids.

    """
    ids = list(ids)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"split_train_val: val_fraction must be in [0, 1), got {val_fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("split_train_val: ids contain duplicates")
    if val_fraction == 0.0 or len(ids) < 2:
        return ids, []
    n_val = min(max(1, round(len(ids) * val_fraction)), len(ids) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(ids))[:n_val].tolist())
    train = [x for i, x in enumerate(ids) if i not in chosen]
    val = [x for i, x in enumerate(ids) if i in chosen]
    return train, val


class TrainBatches:
    """Augmented, normalised training batches, reproducible per epoch.

    The shuffling and augmentation of epoch ``e`` use ``np.random.default_rng([seed, e])``
    only, so epoch ``e`` is the same whether or not earlier epochs ran (exact resume).
    Decoded images are cached in memory on first use.

    Each image is normalised before cropping, so pixels padded in (small images) are 0 in
    normalised units, as in evaluation padding.
    """

    def __init__(
        self,
        dataset: IRSTDDataset,
        ids: Sequence[str],
        *,
        batch_size: int,
        crop: int,
        mean: float,
        std: float,
        seed: int,
        target_bias: float = 0.8,
        drop_last: bool = True,
    ) -> None:
        """Configure the batches.

        Args:
            dataset: Dataset the ids belong to.
            ids: Training ids (e.g. from :func:`split_train_val`).
            batch_size: Images per batch.
            crop: Crop side in pixels.
            mean: Normalisation mean (0..255 units).
            std: Normalisation std (0..255 units).
            seed: Base seed; epoch ``e`` uses ``default_rng([seed, e])``.
            target_bias: Probability that a crop contains a target.
            drop_last: Drop the last incomplete batch.

        Raises:
            ValueError: Bad sizes, unknown ids, or no batch at all per epoch.

        """
        self.dataset = dataset
        self.ids = list(ids)
        if batch_size < 1:
            raise ValueError(f"TrainBatches: batch_size must be >= 1, got {batch_size}")
        if not std > 0:
            raise ValueError(f"TrainBatches: std must be > 0, got {std}")
        if seed < 0:
            raise ValueError(f"TrainBatches: seed must be >= 0, got {seed}")
        known = set(dataset.ids)
        unknown = [i for i in self.ids if i not in known]
        if unknown:
            raise ValueError(
                f"TrainBatches: {len(unknown)} ids are not in split {dataset.split!r} of "
                f"{dataset.root}: {', '.join(unknown[:5])}"
            )
        if not self.ids or (drop_last and len(self.ids) < batch_size):
            raise ValueError(
                f"TrainBatches: {len(self.ids)} training ids give no batch of {batch_size} "
                "(drop_last=True): lower batch_size or use more images"
            )
        self.batch_size = int(batch_size)
        self.crop = int(crop)
        self.mean = float(mean)
        self.std = float(std)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.augment = TrainAugment(crop, target_bias)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        n = len(self.ids)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _get(self, id_: str) -> tuple[np.ndarray, np.ndarray]:
        item = self._cache.get(id_)
        if item is None:
            sample = self.dataset.load(id_)
            item = self._cache[id_] = (sample.image, sample.mask)
        return item

    def epoch(self, e: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the batches of epoch ``e``.

        Yields:
            (images, masks): float32 arrays of shape (B, 1, crop, crop); images normalised,
            masks in {0, 1}. B is ``batch_size`` except possibly for the last batch when
            ``drop_last`` is False.

        """
        if e < 0:
            raise ValueError(f"TrainBatches.epoch: epoch must be >= 0, got {e}")
        rng = np.random.default_rng([self.seed, int(e)])
        order = rng.permutation(len(self.ids))
        for b in range(len(self)):
            chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = np.empty((len(chunk), 1, self.crop, self.crop), np.float32)
            masks = np.empty_like(images)
            for j, k in enumerate(chunk):
                image, mask = self._get(self.ids[k])
                x = normalize(image, self.mean, self.std)
                x, m = self.augment(x, mask, rng)
                images[j, 0] = x
                masks[j, 0] = m
            yield images, masks


def iter_eval(
    dataset: IRSTDDataset, *, mean: float, std: float, multiple: int = 32
) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[int, int]]]:
    """Yield the images of a split at native resolution, ready for a network.

    Pad value is 0 in normalised units (the mean). Crop predictions back with
    :func:`irkd.data.transforms.crop_back` and the yielded (H, W).

    Yields:
        (id, image float32 (1, 1, Hp, Wp) normalised and padded to a multiple of
        ``multiple``, mask uint8 (H, W) in {0, 1}, (H, W)).

    """
    for id_ in dataset.ids:
        sample = dataset.load(id_)
        x = normalize(sample.image, mean, std)[None, None]
        x, hw = pad_to_multiple(x, multiple, 0.0)
        yield id_, np.ascontiguousarray(x), sample.mask, hw
