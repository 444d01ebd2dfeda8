from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from irkd.data import DatasetError, IRSTDDataset, check_dataset, read_mask, synthesize


def test_layout_and_splits(synth_root: Path) -> None:
    train = (synth_root / "train.txt").read_text().split()
    test = (synth_root / "test.txt").read_text().split()
    assert len(train) == len(test) == 12 and not set(train) & set(test)
    assert sorted(train + test) == [f"synth_{i:05d}" for i in range(1, 25)]
    assert "synthesize" in (synth_root / "SOURCE.md").read_text()
    image = cv2.imread(str(synth_root / "images" / "synth_00001.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(synth_root / "masks" / "synth_00001.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    assert mask.shape == (256, 256) and set(np.unique(mask).tolist()) <= {0, 255}
    assert IRSTDDataset(synth_root, "train").ids == train


def test_targets_have_promised_sizes_and_contrast(synth_root: Path) -> None:
    counts = []
    for path in sorted((synth_root / "masks").glob("*.png")):
        mask = read_mask(path)
        image = cv2.imread(str(synth_root / "images" / path.name), cv2.IMREAD_GRAYSCALE)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        counts.append(n - 1)
        for k in range(1, n):
            w, h = stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT]
            assert 1 <= w <= 9 and 1 <= h <= 9, (path.name, w, h)
            # the target is brighter than its surroundings
            x, y = stats[k, cv2.CC_STAT_LEFT], stats[k, cv2.CC_STAT_TOP]
            ring = image[max(0, y - 8) : y + h + 8, max(0, x - 8) : x + w + 8]
            assert image[labels == k].max() > np.median(ring), path.name
    assert counts.count(0) == round(24 * 0.1)
    assert set(counts) - {0} <= {1, 2, 3} and {1, 2, 3} & set(counts)


def test_deterministic_for_a_seed(tmp_path: Path, synth_root: Path) -> None:
    again = synthesize(tmp_path / "again", 24, seed=0)
    other = synthesize(tmp_path / "other", 24, seed=1)
    for rel in ["train.txt", "test.txt", "images/synth_00007.png", "masks/synth_00007.png"]:
        assert (again / rel).read_bytes() == (synth_root / rel).read_bytes(), rel
    assert (other / "images/synth_00007.png").read_bytes() != (
        synth_root / "images/synth_00007.png"
    ).read_bytes()


def test_overwrite_rules(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "s", 4, seed=0, size=32)
    with pytest.raises(DatasetError, match=rf"{out} is not empty.*overwrite=True"):
        synthesize(out, 4, seed=1, size=32)
    synthesize(out, 3, seed=1, size=32, overwrite=True)
    assert len(list((out / "images").iterdir())) == 3
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        synthesize(real, 4, overwrite=True)
    assert (real / "images").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthesize(empty, 2, size=32) == empty


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n=1), "n must"),
        (dict(n=4, test_fraction=0.0), "test_fraction"),
        (dict(n=4, test_fraction=1.0), "test_fraction"),
        (dict(n=4, size=31), "size"),
        (dict(n=4, empty_fraction=1.5), "empty_fraction"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthesize(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_small_size_and_check(tmp_path: Path) -> None:
    out = synthesize(tmp_path / "tiny", 10, seed=5, size=48, test_fraction=0.3)
    r = check_dataset(out)
    assert r.ok and r.warnings == [] and r.splits == {"train": 7, "test": 3}


def test_fast(tmp_path: Path) -> None:
    t = time.perf_counter()
    synthesize(tmp_path / "fast", 100, seed=2)
    assert time.perf_counter() - t < 5
