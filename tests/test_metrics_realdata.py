"""IRSTDMetrics against an independent reference (scipy.ndimage + plain Python loops).

Prediction maps are built from real NUAA-SIRST / NUDT-SIRST test masks with deterministic
perturbations (dropped, shifted, eroded and dilated targets, false blobs), and from random maps.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from irkd.metrics import IRSTDMetrics, match_targets

_DATA_ROOT = (
    Path(os.environ["IRKD_DATA"])
    if os.environ.get("IRKD_DATA")
    else Path(__file__).resolve().parents[2] / "shared" / "data"
)

DATA = _DATA_ROOT
IDS = {
    "NUAA-SIRST": [
        "Misc_338", "Misc_379", "Misc_422", "Misc_73", "Misc_321",
        "Misc_162", "Misc_372", "Misc_185", "Misc_420", "Misc_143",
    ],
    "NUDT-SIRST": [
        "000541", "000832", "000710", "000316", "001142",
        "000409", "000226", "001133", "001255", "000558",
    ],
}  # fmt: skip
THRESHOLDS = (0.12, 0.3, 0.5, 0.97)


# --------------------------------------------------------------------------- reference


def _components(binary: np.ndarray) -> tuple[list[tuple[float, float]], list[int]]:
    labels, n = ndimage.label(binary, structure=np.ones((3, 3), dtype=int))
    idx = list(range(1, n + 1))
    centres = ndimage.center_of_mass(binary.astype(np.float64), labels, idx) if n else []
    areas = [int(a) for a in np.bincount(labels.ravel(), minlength=n + 1)[1:]]
    return [(float(y), float(x)) for y, x in centres], areas


def _reference_image(pred: np.ndarray, gt: np.ndarray) -> dict:
    gt_c, _ = _components(gt)
    pred_c, pred_a = _components(pred)
    used = [False] * len(pred_c)
    matched = 0
    for gy, gx in gt_c:
        for j, (py, px) in enumerate(pred_c):
            if not used[j] and math.hypot(py - gy, px - gx) < 3.0:
                used[j] = True
                matched += 1
                break
    false_px = sum(a for a, u in zip(pred_a, used, strict=True) if not u)
    inter = int(np.logical_and(pred, gt).sum())
    union = int(np.logical_or(pred, gt).sum())
    return {
        "n_gt": len(gt_c),
        "matched": matched,
        "false_px": false_px,
        "inter": inter,
        "union": union,
        "iou": inter / union if union else 1.0,
        "pixels": gt.size,
    }


def _reference_set(probs: list[np.ndarray], gts: list[np.ndarray], t: float) -> dict:
    rows = [_reference_image(p > t, g > 0) for p, g in zip(probs, gts, strict=True)]
    tot = {k: sum(r[k] for r in rows) for k in ("n_gt", "matched", "false_px", "inter", "union")}
    pixels = sum(r["pixels"] for r in rows)
    return {
        "iou": tot["inter"] / tot["union"],
        "niou": sum(r["iou"] for r in rows) / len(rows),
        "pd": tot["matched"] / tot["n_gt"],
        "fa": tot["false_px"] / pixels,
        "n_targets": tot["n_gt"],
        "n_matched": tot["matched"],
        "n_pixels": pixels,
        "n_false_alarm_pixels": tot["false_px"],
    }


# --------------------------------------------------------------------------- perturbations


def _perturb(gt: np.ndarray, k: int) -> np.ndarray:
    """Deterministic probability map from a {0,1} GT mask; variant k % 6."""
    h, w = gt.shape
    labels, n = ndimage.label(gt, structure=np.ones((3, 3), dtype=int))
    pred = gt.astype(np.uint8).copy()
    weak = np.zeros_like(pred)
    kernel = np.ones((3, 3), np.uint8)
    variant = k % 6
    if variant == 1 and n:  # drop the last target
        pred[labels == n] = 0
    elif variant == 2 and n:  # shift the first target by (1, 2); the last (if another) by (0, 3)
        first = (labels == 1).astype(np.uint8)
        pred[first > 0] = 0
        pred |= np.roll(first, (1, 2), axis=(0, 1))
        if n > 1:
            last = (labels == n).astype(np.uint8)
            pred[last > 0] = 0
            pred |= np.roll(last, (0, 3), axis=(0, 1))
    elif variant == 3:  # a strong false blob in one corner, a weak one (p = 0.35) in another
        pred[1:4, 1:4] = 1
        weak[h - 5 : h - 2, w - 6 : w - 2] = 1
    elif variant == 4 and n:  # erode the first target, dilate the others
        first = (labels == 1).astype(np.uint8)
        pred = cv2.dilate((gt > 0).astype(np.uint8) - first, kernel) | cv2.erode(first, kernel)
    elif variant == 5:  # dilate everything with a 5x5 ellipse, plus a 1-px false alarm
        pred = cv2.dilate(pred, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        pred[h // 2, 2] = 1
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 0.005 * ((yy * 7 + xx * 13) % 10)  # 0 .. 0.045, > 0.02 on half the pixels
    prob = np.where(pred > 0, 0.9, np.where(weak > 0, 0.35, 0.1)) + texture
    return prob.astype(np.float32)


def _load_masks(name: str) -> list[np.ndarray]:
    root = DATA / name
    if not (root / "masks").is_dir():
        pytest.fail(f"dataset {root} not found (set IRKD_DATA)")
    test_ids = set((root / "test.txt").read_text().split())
    masks = []
    for i in IDS[name]:
        assert i in test_ids
        m = cv2.imread(str(root / "masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        assert m is not None, i
        masks.append(m)  # 0/255, fed as is
    return masks


def _check(m: IRSTDMetrics, probs: list[np.ndarray], gts: list[np.ndarray]) -> None:
    roc = m.roc()
    for t in THRESHOLDS:
        ref = _reference_set(probs, gts, t)
        i = roc["thresholds"].index(t)
        assert roc["pd"][i] == pytest.approx(ref["pd"], rel=1e-12, abs=0), t
        assert roc["fa"][i] == pytest.approx(ref["fa"], rel=1e-12, abs=0), t
        if t == m.threshold:
            r = m.compute()
            for key in ("n_targets", "n_matched", "n_pixels", "n_false_alarm_pixels"):
                assert r[key] == ref[key], key
            for key in ("iou", "niou", "pd", "fa"):
                assert r[key] == pytest.approx(ref[key], rel=1e-12, abs=0), key


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(IDS))
def test_real_masks_with_perturbations(name: str) -> None:
    gts = _load_masks(name)
    probs = [_perturb((g > 0).astype(np.uint8), k) for k, g in enumerate(gts)]
    m = IRSTDMetrics(roc_thresholds=THRESHOLDS)
    for p, g in zip(probs, gts, strict=True):
        m.update(p, g)
    _check(m, probs, gts)
    r = m.compute()
    # the perturbations really bite: some misses and false alarms, but most targets found
    assert 0.5 < r["pd"] < 1.0 and r["fa"] > 0 and 0.3 < r["iou"] < 1.0
    if name == "NUDT-SIRST":  # 256x256 each; nothing reshapes the (varied) NUAA sizes
        assert r["n_pixels"] == 10 * 256 * 256
    else:
        assert r["n_pixels"] == sum(g.size for g in gts) and len({g.shape for g in gts}) == 10


def test_random_maps_against_reference() -> None:
    rng = np.random.default_rng(123)
    probs, gts = [], []
    for k in range(12):
        h, w = rng.integers(20, 70, size=2)
        gt = ndimage.binary_dilation(rng.random((h, w)) > 0.985, iterations=int(k % 2))
        shift = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        prob = np.clip(0.7 * shift + rng.random((h, w)) * 0.45, 0, 1)
        probs.append(prob)
        gts.append(gt.astype(np.uint8))
    m = IRSTDMetrics(roc_thresholds=THRESHOLDS)
    for p, g in zip(probs, gts, strict=True):
        m.update(p, g)
    _check(m, probs, gts)
    for p, g in zip(probs, gts, strict=True):  # match_targets on its own, image by image
        ref = _reference_image(p > 0.5, g > 0)
        res = match_targets(p > 0.5, g)
        assert (res.n_gt, res.n_matched, res.false_alarm_pixels) == (
            ref["n_gt"],
            ref["matched"],
            ref["false_px"],
        )
