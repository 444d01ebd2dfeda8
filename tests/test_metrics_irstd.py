"""Hand-built checks of irkd.metrics.irstd; every expected number is derived in a comment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from irkd.metrics import DEFAULT_ROC_THRESHOLDS, IRSTDMetrics, label_targets, match_targets


def _blank(h: int = 20, w: int = 20) -> np.ndarray:
    return np.zeros((h, w), dtype=np.uint8)


def _metrics_of(pred: np.ndarray, gt: np.ndarray, **kw) -> dict:
    m = IRSTDMetrics(**kw)
    m.update(pred.astype(np.float32), gt)
    return m.compute()


# --------------------------------------------------------------------------- label_targets


def test_label_targets_eight_connectivity_order_and_centroids() -> None:
    b = _blank(8, 8)
    b[1, 5] = 1  # first component in raster order (row 1)
    b[2, 1] = b[3, 2] = 1  # diagonal pair: one 8-connected component, centroid (2.5, 1.5)
    b[6, 6] = b[6, 7] = b[7, 6] = 1  # L: centroid ((6+6+7)/3, (6+7+6)/3) = (19/3, 19/3)
    n, labels, areas, centroids = label_targets(b)
    assert n == 3
    assert labels.shape == b.shape
    assert labels[1, 5] == 1 and labels[2, 1] == 2 and labels[3, 2] == 2 and labels[6, 6] == 3
    assert areas.tolist() == [1, 2, 3]
    np.testing.assert_allclose(centroids, [[1, 5], [2.5, 1.5], [19 / 3, 19 / 3]])


def test_label_targets_empty_and_bad_ndim() -> None:
    n, labels, areas, centroids = label_targets(_blank(5, 7))
    assert n == 0 and areas.shape == (0,) and centroids.shape == (0, 2)
    assert not labels.any()
    with pytest.raises(ValueError, match="2-D"):
        label_targets(np.zeros((2, 3, 3)))


def test_label_order_is_raster_order_on_large_maps() -> None:
    # scipy.ndimage.label numbers components in raster order of their first pixel, so the label
    # images must agree (OpenCV's default algorithm would fail this: it numbers 2-row blocks).
    rng = np.random.default_rng(0)
    b = rng.random((1500, 1300)) > 0.93
    n, labels, areas, _ = label_targets(b)
    ref, n_ref = ndimage.label(b, structure=np.ones((3, 3)))
    assert n == n_ref
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(areas, np.bincount(ref.ravel())[1:])


# --------------------------------------------------------------------------- matching


def test_two_targets_one_missed() -> None:
    gt = _blank()
    gt[2:4, 2:4] = 1  # target A: 4 px
    gt[12:14, 12:14] = 1  # target B: 4 px
    pred = _blank()
    pred[2:4, 2:4] = 1  # finds A exactly, misses B
    # pd = 1/2; inter = 4, union = 8 -> IoU = 0.5; no false alarm; 400 pixels.
    res = match_targets(pred, gt)
    assert (res.n_gt, res.n_matched, res.n_pred, res.false_alarm_pixels) == (2, 1, 1, 0)
    assert res.matched_pred == [0]
    r = _metrics_of(pred, gt)
    assert r["pd"] == 0.5 and r["iou"] == 0.5 and r["niou"] == 0.5
    assert r["fa"] == 0.0 and r["n_targets"] == 2 and r["n_matched"] == 1 and r["n_pixels"] == 400


def test_false_blob_with_same_area_as_matched_counts_as_false_alarm() -> None:
    gt = _blank()
    gt[2:4, 2:4] = 1  # one 4-px target
    pred = _blank()
    pred[2:4, 2:4] = 1  # matched, 4 px
    pred[10:12, 10:12] = 1  # false blob, also 4 px (the area-matching bug would drop it)
    # false-alarm pixels = 4 -> fa = 4 / 400 = 0.01 exactly; pd = 1; IoU = 4 / 8.
    res = match_targets(pred, gt)
    assert res.false_alarm_pixels == 4 and res.matched_pred == [0] and res.n_pred == 2
    r = _metrics_of(pred, gt)
    assert r["fa"] == 4 / 400 and r["fa_1e6"] == pytest.approx(1e4)
    assert r["n_false_alarm_pixels"] == 4 and r["pd"] == 1.0 and r["iou"] == 0.5


def test_false_blob_with_same_area_before_the_true_one() -> None:
    # The false blob comes first in raster order and is far from the target: still 4 false px.
    gt = _blank()
    gt[12:14, 12:14] = 1
    pred = _blank()
    pred[1:3, 1:3] = 1  # label 1, false, 4 px
    pred[12:14, 12:14] = 1  # label 2, matched, 4 px
    res = match_targets(pred, gt)
    assert res.matched_pred == [1] and res.false_alarm_pixels == 4


def test_centroid_at_distance_2_9_is_matched() -> None:
    gt = _blank()
    gt[10, 10] = 1  # centroid (10, 10)
    pred = _blank()
    pred[6:15, 13] = 1  # column of 9 px at x = 13, rows 6..14
    pred[10, 12] = 1  # plus (10, 12), touching the column
    # centroid y = (6+...+14 + 10) / 10 = (90 + 10) / 10 = 10.0
    # centroid x = (9 * 13 + 12) / 10 = 12.9  -> distance 2.9 < 3: matched
    _, _, _, c = label_targets(pred)
    assert c[0, 0] == 10.0 and c[0, 1] == pytest.approx(12.9)
    res = match_targets(pred, gt)
    assert res.n_matched == 1 and res.false_alarm_pixels == 0


def test_two_pixel_components_at_sqrt_8_5_are_matched() -> None:
    gt = _blank()
    gt[5, 5:7] = 1  # centroid (5, 5.5)
    pred = _blank()
    pred[7:9, 7] = 1  # centroid (7.5, 7): offset (2.5, 1.5), distance sqrt(8.5) = 2.915 < 3
    assert match_targets(pred, gt).n_matched == 1


def test_centroid_at_distance_exactly_3_is_not_matched() -> None:
    gt = _blank()
    gt[5:7, 5] = 1  # two pixels, centroid (5.5, 5.0)
    pred = _blank()
    pred[5:7, 8] = 1  # two pixels, centroid (5.5, 8.0): distance exactly 3.0, not < 3
    res = match_targets(pred, gt)
    assert res.n_matched == 0 and res.false_alarm_pixels == 2
    # pd = 0, fa = 2 / 400; a larger radius matches it.
    r = _metrics_of(pred, gt)
    assert r["pd"] == 0.0 and r["fa"] == 2 / 400
    assert match_targets(pred, gt, max_dist=3.01).n_matched == 1


def test_greedy_first_unmatched_prediction() -> None:
    # One prediction between two GT targets: the first GT (label order) takes it.
    gt = _blank()
    gt[5, 5] = gt[5, 9] = 1
    pred = _blank()
    pred[5, 7] = 1  # distance 2 from both
    res = match_targets(pred, gt)
    assert (res.n_gt, res.n_matched, res.false_alarm_pixels) == (2, 1, 0)
    # One GT target with two predictions in range: the first (raster order) matches, the
    # other is a 1-px false alarm.
    gt = _blank()
    gt[5, 5] = 1
    pred = _blank()
    pred[5, 3] = pred[5, 7] = 1
    res = match_targets(pred, gt)
    assert res.matched_pred == [0] and res.false_alarm_pixels == 1 and res.n_pred == 2


def test_match_targets_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        match_targets(_blank(4, 4), _blank(4, 5))


# --------------------------------------------------------------------------- IRSTDMetrics


def test_image_without_targets() -> None:
    gt = _blank(10, 10)
    pred = _blank(10, 10)
    pred[1, 1] = pred[1, 2] = pred[2, 1] = 1  # 3 false pixels, no target
    # pd undefined (no target) -> nan; fa = 3 / 100; inter 0, union 3 -> IoU 0, nIoU 0.
    r = _metrics_of(pred, gt)
    assert math.isnan(r["pd"]) and r["n_targets"] == 0
    assert r["fa"] == 0.03 and r["iou"] == 0.0 and r["niou"] == 0.0


def test_empty_image_conventions_for_niou() -> None:
    empty = _blank(10, 10)  # GT and prediction both empty: union 0
    gt = _blank(10, 10)
    gt[2:4, 2:4] = 1
    pred = _blank(10, 10)
    pred[2:4, 3:5] = 1  # shifted 1 column: inter 2, union 6 -> IoU 1/3
    results = {}
    for empty_iou in (1.0, None, 0.0):
        m = IRSTDMetrics(empty_iou=empty_iou)
        m.update(empty.astype(float), empty)
        m.update(pred.astype(float), gt)
        results[empty_iou] = m.compute()
    # default: the empty image scores 1 -> nIoU = (1 + 1/3) / 2 = 2/3
    assert results[1.0]["niou"] == pytest.approx(2 / 3)
    # None: skipped -> nIoU = 1/3;  0.0 (research codebases): (0 + 1/3) / 2 = 1/6
    assert results[None]["niou"] == pytest.approx(1 / 3)
    assert results[0.0]["niou"] == pytest.approx(1 / 6)
    for r in results.values():  # set-level IoU = 2 / 6 whatever the convention
        assert r["iou"] == pytest.approx(1 / 3) and r["n_images"] == 2 and r["pd"] == 1.0


def test_all_empty_set_and_no_images() -> None:
    m = IRSTDMetrics()
    m.update(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    r = m.compute()
    # total union 0 -> iou nan; every image scores 1 for nIoU; no target -> pd nan; fa 0/48.
    assert math.isnan(r["iou"]) and r["niou"] == 1.0 and math.isnan(r["pd"])
    assert r["fa"] == 0.0 and r["n_pixels"] == 48 and r["n_images"] == 3
    r0 = IRSTDMetrics().compute()
    assert r0["n_images"] == 0
    assert all(math.isnan(r0[k]) for k in ("iou", "niou", "pd", "fa", "fa_1e6"))
    roc = IRSTDMetrics().roc()
    assert len(roc["pd"]) == len(DEFAULT_ROC_THRESHOLDS) and all(math.isnan(v) for v in roc["pd"])


def test_images_of_different_sizes() -> None:
    a_gt = _blank(10, 12)
    a_gt[3:5, 3:5] = 1
    a_pred = a_gt.copy()
    a_pred[8, 10] = 1  # 1 false pixel
    b_gt = _blank(7, 5)
    b_pred = _blank(7, 5)
    b_pred[0, 0] = 1  # 1 false pixel, no target
    c_gt = _blank(33, 17)  # a third size, fed as a batch of one (1, 1, H, W)
    c_gt[20, 9] = 255  # a 0/255 mask
    c_pred = np.zeros((1, 1, 33, 17))
    c_pred[0, 0, 20, 9] = 0.75
    m = IRSTDMetrics()
    m.update(a_pred.astype(float), a_gt)
    m.update(b_pred.astype(float), b_gt)
    m.update(c_pred, c_gt[None, None])
    r = m.compute()
    # pixels: 10*12 + 7*5 + 33*17 = 120 + 35 + 561 = 716; false pixels 2 -> fa = 2 / 716
    assert r["n_pixels"] == 716 and r["n_images"] == 3
    assert r["fa"] == 2 / 716
    # targets 2 (a, c), both found; inter = 4 + 0 + 1 = 5, union = 5 + 1 + 1 = 7
    assert r["pd"] == 1.0 and r["iou"] == 5 / 7
    # per image IoU: 4/5, 0/1, 1/1 -> nIoU = (0.8 + 0 + 1) / 3 = 0.6
    assert r["niou"] == pytest.approx(0.6)


def test_threshold_is_strict() -> None:
    gt = _blank(6, 6)
    gt[2, 2] = 1
    prob = np.zeros((6, 6))
    prob[2, 2] = 0.5  # not > 0.5
    r = _metrics_of(prob, gt)
    assert r["pd"] == 0.0 and r["iou"] == 0.0
    r = _metrics_of(prob, gt, threshold=0.49)
    assert r["pd"] == 1.0 and r["iou"] == 1.0


def _random_batch(seed: int, b: int = 4, h: int = 24, w: int = 30) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    gt = (rng.random((b, h, w)) > 0.96).astype(np.uint8)
    gt = np.stack([ndimage.binary_dilation(g) for g in gt]).astype(np.uint8)
    prob = np.clip(gt * 0.7 + rng.random((b, h, w)) * 0.55, 0.0, 1.0)
    return prob, gt


def test_batch_and_per_image_updates_agree() -> None:
    prob, gt = _random_batch(1)
    per_image = IRSTDMetrics()
    for p, g in zip(prob, gt, strict=True):
        per_image.update(p, g)
    batch3 = IRSTDMetrics()
    batch3.update(prob, gt)
    batch4 = IRSTDMetrics()
    batch4.update(prob[:, None], (gt * 255)[:, None])  # (B, 1, H, W), 0/255 mask
    mixed = IRSTDMetrics()
    mixed.update(prob[:2], gt[:2].astype(bool))
    mixed.update(prob[2:, None], gt[2:, None].astype(np.float32))
    ref = per_image.compute()
    assert ref["n_targets"] > 0 and 0 < ref["pd"] and ref["fa"] > 0
    for other in (batch3, batch4, mixed):
        assert other.compute() == ref
        assert other.roc() == per_image.roc()


def test_reset_clears_all_state() -> None:
    prob, gt = _random_batch(2)
    fresh = IRSTDMetrics()
    fresh.update(prob, gt)
    m = IRSTDMetrics()
    p_other, g_other = _random_batch(3, b=3, h=40, w=17)
    m.update(p_other, g_other)
    m.update(np.ones((9, 9)), np.zeros((9, 9)))
    assert m.compute() != fresh.compute()
    m.reset()
    assert m.compute()["n_images"] == 0 and m.per_image_iou == []
    m.update(prob, gt)
    assert m.compute() == fresh.compute()
    assert m.roc() == fresh.roc()


def test_roc_at_threshold_equals_compute() -> None:
    prob, gt = _random_batch(4)
    m = IRSTDMetrics()
    m.update(prob, gt)
    r, roc = m.compute(), m.roc()
    i = roc["thresholds"].index(0.5)
    assert roc["pd"][i] == r["pd"] and roc["fa"][i] == r["fa"] and roc["fa_1e6"][i] == r["fa_1e6"]
    assert len({len(v) for v in roc.values()}) == 1
    # the (0, 0) end of the curve: prob > 1.0 predicts nothing
    assert roc["thresholds"][-1] == 1.0 and roc["pd"][-1] == 0.0 and roc["fa"][-1] == 0.0
    # a custom threshold list, and another operating threshold
    m2 = IRSTDMetrics(threshold=0.3, roc_thresholds=[0.3, 0.6])
    m2.update(prob, gt)
    m3 = IRSTDMetrics(threshold=0.6)
    m3.update(prob, gt)
    roc2 = m2.roc()
    assert roc2["thresholds"] == [0.3, 0.6]
    assert roc2["pd"] == [m2.compute()["pd"], m3.compute()["pd"]]
    assert roc2["fa"] == [m2.compute()["fa"], m3.compute()["fa"]]


@pytest.mark.parametrize(
    ("prob", "mask", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), "shape mismatch"),
        (np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), "shape mismatch"),
        (np.full((4, 4), np.nan), np.zeros((4, 4)), "NaN or infinite"),
        (np.full((4, 4), np.inf), np.zeros((4, 4)), "NaN or infinite"),
        (np.full((4, 4), 1.5), np.zeros((4, 4)), r"\[0, 1\]"),
        (np.full((4, 4), -0.1), np.zeros((4, 4)), r"\[0, 1\]"),
        (np.full((4, 4), 255, dtype=np.uint8), np.zeros((4, 4)), r"\[0, 1\]"),
        (np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 4, 4)), "shape"),
        (np.zeros(4), np.zeros(4), "shape"),
        (np.zeros((4, 4)), np.full((4, 4), -1.0), "non-negative"),
        (np.zeros((4, 4)), np.full((4, 4), np.nan), "mask contains NaN"),
        (np.array([["a"]]), np.zeros((1, 1)), "numeric"),
    ],
)
def test_invalid_inputs(prob: np.ndarray, mask: np.ndarray, match: str) -> None:
    m = IRSTDMetrics()
    with pytest.raises(ValueError, match=match):
        m.update(prob, mask)
    assert m.compute()["n_images"] == 0  # a rejected update leaves no trace


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": float("nan")}, {"max_dist": 0.0}, {"roc_thresholds": [0.5, float("inf")]}],
)
def test_invalid_constructor_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        IRSTDMetrics(**kwargs)
