"""score_predictions end to end: prediction PNGs in tmp_path against small dataset folders."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from irkd.data import MaskSizeWarning
from irkd.metrics import IRSTDMetrics
from irkd.metrics.score import PredictionError, score_predictions

_DATA_ROOT = (
    Path(os.environ["IRKD_DATA"])
    if os.environ.get("IRKD_DATA")
    else Path(__file__).resolve().parents[2] / "shared" / "data"
)

NUAA = _DATA_ROOT / "NUAA-SIRST"
NUAA_IDS = ["Misc_338", "Misc_379", "Misc_111", "Misc_420", "Misc_73", "Misc_137"]


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _synthetic_dataset(root: Path) -> dict[str, np.ndarray]:
    """Six images of four sizes, 1-3 square targets each (one image without any)."""
    rng = np.random.default_rng(7)
    masks = {}
    sizes = [(40, 56), (40, 56), (33, 70), (64, 64), (25, 31), (50, 45)]
    for k, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(k % 4):
            y, x = int(rng.integers(2, h - 5)), int(rng.integers(2, w - 5))
            mask[y : y + 3, x : x + 2] = 255
        ident = f"img{k:02d}"
        _write(root / "images" / f"{ident}.png", rng.integers(0, 255, (h, w), dtype=np.uint8))
        _write(root / "masks" / f"{ident}.png", mask)
        masks[ident] = mask
    ids = list(masks)
    (root / "test.txt").write_text("\n".join(ids) + "\n")
    (root / "train.txt").write_text(ids[0] + "\n")
    return masks


def _prediction(mask: np.ndarray, k: int) -> np.ndarray:
    """8-bit prediction map: the GT (value 200) shifted / thinned / with false blobs."""
    pred = (mask > 0).astype(np.uint8) * 200
    if k % 3 == 1:
        pred = np.roll(pred, (1, 1), axis=(0, 1))
    if k % 3 == 2:
        pred = cv2.erode(pred, np.ones((3, 3), np.uint8))  # 3x2 targets vanish: misses
    if k % 2:
        pred[0:2, 0:2] = 140  # false blob (140/255 = 0.55 > 0.5)
        pred[-1, -1] = 120  # below the threshold (0.47)
    pred[-1, 0] = 51  # 51 / 255 = 0.2 exactly: not above the ROC threshold 0.2
    return pred + np.uint8(10) * (pred == 0)  # a faint floor: 10/255 never fires at 0.5


def _expected(preds: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> IRSTDMetrics:
    m = IRSTDMetrics()
    for ident, pred in preds.items():
        m.update(pred.astype(np.float64) / 255.0, masks[ident])
    return m


def test_score_synthetic_matches_metrics(tmp_path: Path) -> None:
    masks = _synthetic_dataset(tmp_path / "data")
    preds = {i: _prediction(m, k) for k, (i, m) in enumerate(masks.items())}
    for ident, pred in preds.items():
        _write(tmp_path / "pred" / f"{ident}.png", pred)
    result = score_predictions(tmp_path / "pred", tmp_path / "data", "test")
    expected = _expected(preds, masks)
    ref = expected.compute()
    for key, value in ref.items():
        assert result[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert result["roc"] == expected.roc()
    assert result["count"] == 6 and result["split"] == "test" and result["layout"] == "irkd"
    assert result["dataset"] == str(tmp_path / "data")
    assert result["n_pixels"] == sum(m.size for m in masks.values())
    assert result["n_targets"] == 7 and 0 < result["pd"] < 1 and result["fa"] > 0


def test_score_threshold_and_binary_maps(tmp_path: Path) -> None:
    masks = _synthetic_dataset(tmp_path / "data")
    for ident, mask in masks.items():  # the GT itself, 0/255: a perfect score
        _write(tmp_path / "pred" / f"{ident}.png", mask)
    r = score_predictions(tmp_path / "pred", tmp_path / "data", threshold=0.3)
    assert r["iou"] == 1.0 and r["niou"] == 1.0 and r["pd"] == 1.0 and r["fa"] == 0.0
    assert r["threshold"] == 0.3
    for ident, mask in masks.items():  # targets at 51 / 255 = 0.2: not above threshold 0.2
        _write(tmp_path / "pred" / f"{ident}.png", (mask > 0).astype(np.uint8) * 51)
    assert score_predictions(tmp_path / "pred", tmp_path / "data", threshold=0.2)["pd"] == 0.0
    assert score_predictions(tmp_path / "pred", tmp_path / "data", threshold=0.19)["pd"] == 1.0


def test_score_real_nuaa_subset(tmp_path: Path) -> None:
    if not (NUAA / "masks").is_dir():
        pytest.fail(f"dataset {NUAA} not found (set IRKD_DATA)")
    data = tmp_path / "nuaa"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for ident in NUAA_IDS:
            shutil.copy(NUAA / sub / f"{ident}.png", data / sub / f"{ident}.png")
    (data / "test.txt").write_text("\n".join(NUAA_IDS) + "\n")
    (data / "train.txt").write_text("Misc_338\n")
    masks = {}
    for ident in NUAA_IDS:
        image = cv2.imread(str(NUAA / "images" / f"{ident}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(NUAA / "masks" / f"{ident}.png"), cv2.IMREAD_GRAYSCALE)
        if mask.shape != image.shape:  # Misc_111: the protocol resizes its mask to the image
            mask = cv2.resize(mask, image.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        masks[ident] = mask
    assert masks["Misc_111"].shape == (220, 325)
    preds = {i: _prediction(m, k) for k, (i, m) in enumerate(masks.items())}
    for ident, pred in preds.items():
        _write(tmp_path / "pred" / f"{ident}.png", pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskSizeWarning)
        result = score_predictions(tmp_path / "pred", data, "test")
    ref = _expected(preds, masks).compute()
    for key in ("iou", "niou", "pd", "fa", "n_targets", "n_matched", "n_pixels"):
        assert result[key] == pytest.approx(ref[key], rel=1e-12), key
    assert result["n_pixels"] == sum(m.size for m in masks.values())


def test_missing_predictions_are_named(tmp_path: Path) -> None:
    masks = _synthetic_dataset(tmp_path / "data")
    keep = list(masks)[:2]
    for ident in keep:
        _write(tmp_path / "pred" / f"{ident}.png", masks[ident])
    with pytest.raises(PredictionError) as err:
        score_predictions(tmp_path / "pred", tmp_path / "data")
    msg = str(err.value)
    assert "4 of the 6 prediction files" in msg
    assert str(tmp_path / "pred" / "img02.png") in msg and "img05.png" in msg
    assert "img00" not in msg
    with pytest.raises(PredictionError, match="not found"):
        score_predictions(tmp_path / "nowhere", tmp_path / "data")


def test_wrong_size_prediction_is_named(tmp_path: Path) -> None:
    masks = _synthetic_dataset(tmp_path / "data")
    for ident, mask in masks.items():
        _write(tmp_path / "pred" / f"{ident}.png", mask)
    _write(tmp_path / "pred" / "img03.png", np.zeros((256, 256), np.uint8))
    with pytest.raises(PredictionError) as err:
        score_predictions(tmp_path / "pred", tmp_path / "data")
    msg = str(err.value)
    assert str(tmp_path / "pred" / "img03.png") in msg
    assert "256x256" in msg and "64x64" in msg
    assert isinstance(err.value, ValueError)  # the CLI reports ValueErrors as one line
