"""What a training run needs from the data: the dataset root, train/val ids, mean/std, batches.

:func:`prepare_data` carves the validation ids out of the TRAIN split
(:func:`irkd.data.split_train_val` with ``cfg.seed``), computes mean/std on the train ids
only and builds the :class:`irkd.data.TrainBatches`; the test split is opened lazily
(:meth:`PreparedData.test_set`) and never used to choose a checkpoint.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irkd.config import ConfigError, DataConfig, ExperimentConfig
from irkd.data.dataset import IRSTDDataset
from irkd.data.errors import DatasetError
from irkd.data.loader import TrainBatches, split_train_val
from irkd.data.stats import compute_mean_std, require_targets, verify_split
from irkd.data.synth import synthesize
from irkd.files import atomic_dir

__all__ = ["PreparedData", "prepare_data", "resolve_dataset", "subset"]


def resolve_dataset(
    data_cfg: DataConfig, cache_dir: str | os.PathLike[str], *, seed: int = 0, size: int = 256
) -> Path:
    """Return the dataset root of a config, generating the synthetic dataset if needed.

    Args:
        data_cfg: ``cfg.data``; ``root`` is returned as is when set.
        cache_dir: Folder for the synthetic dataset (e.g. ``runs/_data``).
        seed: Seed of the synthetic dataset (a property of the data, not of the run, so the
            teacher and the students of one study see the same images).
        size: Image side of the synthetic dataset.

    Returns:
        ``Path(data_cfg.root)``, or ``cache_dir/"synth-n{N}-s{seed}"`` (``-z{size}`` is
        appended when ``size != 256``), generated on first use and reused afterwards.
    """
    if data_cfg.root is not None:
        return Path(data_cfg.root)
    n = int(data_cfg.synth_n)
    name = f"synth-n{n}-s{seed}" + ("" if size == 256 else f"-z{size}")
    root = Path(cache_dir) / name
    if (root / "train.txt").is_file() and (root / "test.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Generate into a temporary sibling, then rename: a killed generation leaves no
    # half-written dataset that a later run would mistake for a complete one.
    with atomic_dir(root) as tmp:
        synthesize(tmp, n, seed=seed, size=size)
    return root


def subset(dataset: IRSTDDataset, ids: Sequence[str], split: str) -> IRSTDDataset:
    """A shallow copy of ``dataset`` restricted to ``ids`` (which must belong to it)."""
    known = set(dataset.ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"subset: ids not in split {dataset.split!r}: {', '.join(unknown[:5])}")
    view = copy.copy(dataset)
    view.ids = list(ids)
    view.split = split
    return view


@dataclass
class PreparedData:
    """Everything a training loop needs from the data side.

    Attributes:
        root: Dataset root.
        layout: Dataset layout (``cfg.data.layout``).
        train_set: The TRAIN split (all its ids).
        train_ids: Ids trained on (train split minus validation).
        val_ids: Ids used to choose the best checkpoint (a part of the train split).
        val_set: ``train_set`` restricted to ``val_ids`` (for :func:`irkd.evaluate.predict_split`).
        mean: Normalisation mean (0..255), computed on ``train_ids`` only.
        std: Normalisation std (0..255), computed on ``train_ids`` only.
        batches: Training batches (epoch ``e`` from ``default_rng([seed, e])``).
        multiple: Evaluation padding multiple (``cfg.data.eval_multiple``).
    """

    root: Path
    layout: str
    train_set: IRSTDDataset
    train_ids: list[str]
    val_ids: list[str]
    val_set: IRSTDDataset
    mean: float
    std: float
    batches: TrainBatches
    multiple: int

    def test_set(self, split: str = "test") -> IRSTDDataset:
        """Open the test split (only for the final report, never for selection)."""
        return IRSTDDataset(self.root, split, layout=self.layout)

    def info(self) -> dict[str, Any]:
        """JSON-ready summary (root, sizes, mean/std) for logs and reports."""
        return {
            "root": str(self.root),
            "n_train": len(self.train_ids),
            "n_val": len(self.val_ids),
            "mean": self.mean,
            "std": self.std,
            "batches_per_epoch": len(self.batches),
        }


def prepare_data(
    cfg: ExperimentConfig, cache_dir: str | os.PathLike[str], *, synth_size: int = 256
) -> PreparedData:
    """Open the training split, carve the validation part and build the batches.

    Args:
        cfg: The experiment (``data``, ``seed``).
        cache_dir: Where the synthetic dataset lives (see :func:`resolve_dataset`).
        synth_size: Image side of the synthetic dataset when ``data.root`` is None.

    Returns:
        The prepared data.

    Raises:
        DatasetError: A missing or broken dataset folder.
        ValueError: Too few training ids for one batch.
    """
    d = cfg.data
    root = resolve_dataset(d, cache_dir, size=synth_size)
    train_set = IRSTDDataset(root, "train", layout=d.layout)
    train_ids, val_ids = split_train_val(train_set.ids, d.val_fraction, cfg.seed)
    test_set = IRSTDDataset(root, "test", layout=d.layout)
    # Fail before training, not with IoU nan or a broken file after it: both splits must
    # decode, be disjoint and hold a target, and a crop must fit the images.
    overlap = sorted(set(train_set.ids) & set(test_set.ids))
    if overlap:
        raise DatasetError(
            f"{len(overlap)} ids of {root} are in both the train and the test split "
            f"({', '.join(overlap[:3])}{' ...' if len(overlap) > 3 else ''}): a model would be "
            f"tested on images it trained on; fix {train_set.split_file.name} / "
            f"{test_set.split_file.name}"
        )
    top_h, top_w = verify_split(train_set)
    verify_split(test_set)
    require_targets(train_set, train_ids)
    require_targets(test_set)
    if d.crop > max(top_h, top_w):
        raise ConfigError(
            f"data.crop: {d.crop} is larger than every training image of {root} (largest "
            f"{top_h}x{top_w}); a crop that large is mostly zero padding and costs "
            f"{d.crop * d.crop / (top_h * top_w):.0f}x the memory: use data.crop <= "
            f"{max(top_h, top_w) // 32 * 32}"
        )
    mean, std = compute_mean_std(train_set, train_ids)
    if not std > 0:
        raise ValueError(f"training images of {root} have zero variance (std 0)")
    batches = TrainBatches(
        train_set,
        train_ids,
        batch_size=d.batch_size,
        crop=d.crop,
        mean=mean,
        std=std,
        seed=cfg.seed,
        target_bias=d.target_bias,
        drop_last=True,
    )
    return PreparedData(
        root=root,
        layout=d.layout,
        train_set=train_set,
        train_ids=train_ids,
        val_ids=val_ids,
        val_set=subset(train_set, val_ids, "train[val]"),
        mean=mean,
        std=std,
        batches=batches,
        multiple=d.eval_multiple,
    )
