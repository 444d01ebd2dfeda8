"""IRSTD metrics: IoU, nIoU, probability of detection (Pd) and false-alarm rate (Fa).

The protocol is the one of DESIGN.md section 5, written with numpy and OpenCV only:

- A pixel is predicted positive when its probability is strictly greater than the threshold
  (default 0.5, i.e. ``sigmoid(logit) > 0.5``).
- IoU = sum of intersections / sum of unions over the whole set.
- nIoU = mean over images of the per-image IoU.
- Targets are 8-connected components, numbered in raster order of their first pixel. For each
  ground-truth (GT) component, in that order, the first not-yet-matched predicted component
  whose centroid lies at Euclidean distance strictly less than ``max_dist`` (3 px) matches it.
  Pd = matched GT targets / GT targets.
- Fa = predicted pixels that do not belong to a matched predicted component / all pixels of
  the set. Reports usually quote ``fa * 1e6``.

Unlike the research codebases this module keeps no state across ``reset()``, decides false
alarms by component identity (never by area), and works at every image's native size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

DEFAULT_ROC_THRESHOLDS: tuple[float, ...] = tuple(i / 20 for i in range(21))
"""Default ROC thresholds: 0.0, 0.05, ..., 0.95, 1.0.

Prediction is ``prob > t``, so t = 1.0 predicts nothing (the (0, 0) end of the curve) and
t = 0.0 predicts every pixel whose probability is not exactly zero.
"""

_MAX_PAIRS = 1 << 22  # GT x predicted centroid pairs per distance-matrix block


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching the targets of one image.

    Attributes:
        n_gt: Number of GT components.
        n_matched: Number of GT components matched by a predicted component.
        n_pred: Number of predicted components.
        false_alarm_pixels: Predicted pixels outside every matched predicted component.
        matched_pred: 0-based indices (label - 1) of the matched predicted components, in the
            order of the GT components they matched.

    """

    n_gt: int
    n_matched: int
    n_pred: int
    false_alarm_pixels: int
    matched_pred: list[int] = field(default_factory=list)


def label_targets(binary: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Label the 8-connected components of a 2-D binary map.

    Args:
        binary: 2-D array; every non-zero (True) pixel is foreground.

    Returns:
        ``(n, labels, areas, centroids)``: the number of components (background excluded);
        the int32 label image (0 = background, components 1..n numbered in the raster order of
        each component's first pixel, as OpenCV's SAUF algorithm, ``scipy.ndimage.label`` and
        ``skimage.measure.label`` number them); the int64 areas, shape (n,); and the
        float64 centroids as (y, x), shape (n, 2). Component ``k`` of the arrays has label
        ``k + 1``.

    Raises:
        ValueError: If ``binary`` is not 2-D.

    """
    binary = np.asarray(binary)
    if binary.ndim != 2:
        raise ValueError(f"label_targets expects a 2-D map, got shape {binary.shape}")
    fg = np.ascontiguousarray(binary > 0, dtype=np.uint8)
    # SAUF (Wu) numbers components in pixel raster order; OpenCV's default (Spaghetti, a
    # 2x2-block algorithm) numbers them in the order of 2-row blocks instead.
    n_all, labels, stats, centroids_xy = cv2.connectedComponentsWithStatsWithAlgorithm(
        fg, 8, cv2.CV_32S, cv2.CCL_SAUF
    )
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    centroids = np.ascontiguousarray(centroids_xy[1:, ::-1], dtype=np.float64)
    return int(n_all) - 1, labels, areas, centroids


def _match_components(
    gt_centroids: np.ndarray,
    pred_areas: np.ndarray,
    pred_centroids: np.ndarray,
    max_dist: float,
) -> MatchResult:
    """Greedy matching of GT and predicted components (see ``match_targets``)."""
    n_gt = int(gt_centroids.shape[0])
    n_pred = int(pred_centroids.shape[0])
    matched: list[int] = []
    if n_gt and n_pred:
        taken: set[int] = set()
        py, px = pred_centroids[:, 0], pred_centroids[:, 1]
        block = max(1, _MAX_PAIRS // n_pred)  # bound the distance matrix's memory
        for start in range(0, n_gt, block):
            g = gt_centroids[start : start + block]
            dist = np.sqrt((g[:, :1] - py) ** 2 + (g[:, 1:] - px) ** 2)
            rows, cols = np.nonzero(dist < max_dist)  # row-major: columns ascend within a row
            done_row = -1
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                if r != done_row and c not in taken:
                    taken.add(c)
                    matched.append(c)
                    done_row = r
    pred_pixels = int(pred_areas.sum())
    matched_pixels = int(pred_areas[matched].sum()) if matched else 0
    return MatchResult(
        n_gt=n_gt,
        n_matched=len(matched),
        n_pred=n_pred,
        false_alarm_pixels=pred_pixels - matched_pixels,
        matched_pred=matched,
    )


def match_targets(pred_bin: np.ndarray, gt_bin: np.ndarray, max_dist: float = 3.0) -> MatchResult:
    """Match the predicted targets of one image to its GT targets.

    For each GT component in label order, the first predicted component (in label order) that
    is not matched yet and whose centroid lies at Euclidean distance strictly less than
    ``max_dist`` matches it. Each predicted component matches at most one GT component. False
    alarm pixels are the predicted pixels outside the matched components, decided by component
    identity: an unmatched blob counts in full even when its area equals a matched one's.

    Args:
        pred_bin: 2-D binary prediction (non-zero = target).
        gt_bin: 2-D binary GT mask of the same shape (non-zero = target).
        max_dist: Matching radius in pixels (exclusive).

    Returns:
        The ``MatchResult``.

    Raises:
        ValueError: If the maps are not 2-D or their shapes differ.

    """
    pred_bin = np.asarray(pred_bin)
    gt_bin = np.asarray(gt_bin)
    if pred_bin.shape != gt_bin.shape:
        raise ValueError(f"shape mismatch: prediction {pred_bin.shape}, GT {gt_bin.shape}")
    _, _, _, gt_centroids = label_targets(gt_bin)
    _, _, pred_areas, pred_centroids = label_targets(pred_bin)
    return _match_components(gt_centroids, pred_areas, pred_centroids, max_dist)


def _as_batch(x: np.ndarray, name: str) -> np.ndarray:
    """Reshape (H, W), (B, H, W) or (B, 1, H, W) to (B, H, W)."""
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    raise ValueError(f"{name} must have shape (H, W), (B, H, W) or (B, 1, H, W); got {x.shape}")


def _nan_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


class IRSTDMetrics:
    """Streaming IoU / nIoU / Pd / Fa, plus a Pd-Fa ROC over thresholds.

    Feed images with ``update`` (one at a time or in batches; sizes may differ between
    calls), read the figures with ``compute`` and ``roc``, and start over with ``reset``.

    Conventions (undefined ratios):

    - Per-image IoU for nIoU is ``inter / union``; an image where both the prediction and the
      GT are empty (union 0) is a perfect answer and scores ``empty_iou`` (default 1.0).
      ``empty_iou=None`` leaves such images out of nIoU; ``empty_iou=0.0`` reproduces the
      research codebases (which divide by ``union + eps``).
    - Set-level ratios with a zero denominator are NaN, never an exception: ``iou`` when the
      total union is 0 (no predicted and no GT pixel in the whole set), ``pd`` when the set
      has no GT target, ``fa`` when no image was seen, ``niou`` when no image counts.

    Args:
        threshold: A pixel is positive when ``prob > threshold``.
        max_dist: Centroid matching radius in pixels (exclusive, ``dist < max_dist``).
        roc_thresholds: Thresholds of the ROC; default ``DEFAULT_ROC_THRESHOLDS``
            (0.0, 0.05, ..., 1.0).
        empty_iou: Per-image IoU of an image with union 0, or None to skip it in nIoU.

    """

    def __init__(
        self,
        threshold: float = 0.5,
        max_dist: float = 3.0,
        roc_thresholds: Sequence[float] | None = None,
        empty_iou: float | None = 1.0,
    ) -> None:
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if not (np.isfinite(max_dist) and max_dist > 0):
            raise ValueError(f"max_dist must be a positive number, got {max_dist}")
        ts = DEFAULT_ROC_THRESHOLDS if roc_thresholds is None else roc_thresholds
        self.roc_thresholds: tuple[float, ...] = tuple(float(t) for t in ts)
        if not all(np.isfinite(t) for t in self.roc_thresholds):
            raise ValueError(f"roc_thresholds must be finite, got {self.roc_thresholds}")
        self.threshold = float(threshold)
        self.max_dist = float(max_dist)
        self.empty_iou = None if empty_iou is None else float(empty_iou)
        self.reset()

    def reset(self) -> None:
        """Clear all accumulated state."""
        self.n_images = 0
        self.n_pixels = 0
        self.total_inter = 0
        self.total_union = 0
        self.per_image_iou: list[float] = []
        self.n_targets = 0
        self.n_matched = 0
        self.false_alarm_pixels = 0
        n = len(self.roc_thresholds)
        self._roc_matched = [0] * n
        self._roc_false_alarm = [0] * n

    def update(self, prob: np.ndarray, mask: np.ndarray) -> None:
        """Add one image or a batch.

        Args:
            prob: Probabilities in [0, 1], finite, shape (H, W), (B, H, W) or (B, 1, H, W).
                Bool arrays are accepted (True = 1.0).
            mask: GT of the same shape (after the same reshape); any value > 0 is target, so
                {0, 1} and {0, 255} masks both work. Must be finite and non-negative.

        Raises:
            ValueError: On a shape mismatch, a non-finite value, or a value out of range.

        """
        p = np.asarray(prob)
        m = np.asarray(mask)
        if p.dtype == np.bool_:
            p = p.astype(np.float32)
        if not np.issubdtype(p.dtype, np.number):
            raise ValueError(f"prob must be numeric, got dtype {p.dtype}")
        if not (np.issubdtype(m.dtype, np.number) or m.dtype == np.bool_):
            raise ValueError(f"mask must be numeric or bool, got dtype {m.dtype}")
        p = _as_batch(p, "prob")
        m = _as_batch(m, "mask")
        if p.shape != m.shape:
            raise ValueError(f"shape mismatch: prob {p.shape}, mask {m.shape}")
        if p.size and not np.all(np.isfinite(p)):
            raise ValueError("prob contains NaN or infinite values")
        if p.size and (p.min() < 0 or p.max() > 1):
            raise ValueError(
                f"prob must lie in [0, 1] (got min {p.min()}, max {p.max()}); "
                "apply the sigmoid first"
            )
        if m.dtype != np.bool_ and m.size:
            if not np.all(np.isfinite(m)):
                raise ValueError("mask contains NaN or infinite values")
            if m.min() < 0:
                raise ValueError(f"mask must be non-negative, got min {m.min()}")
        for p_img, m_img in zip(p, m, strict=True):
            self._update_one(p_img, m_img > 0)

    def _update_one(self, prob: np.ndarray, gt: np.ndarray) -> None:
        pred = prob > self.threshold
        inter = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        self.n_images += 1
        self.n_pixels += int(gt.size)
        self.total_inter += inter
        self.total_union += union
        if union:
            self.per_image_iou.append(inter / union)
        elif self.empty_iou is not None:
            self.per_image_iou.append(self.empty_iou)

        _, _, _, gt_centroids = label_targets(gt)
        self.n_targets += int(gt_centroids.shape[0])
        res = self._match(pred, gt_centroids)
        self.n_matched += res.n_matched
        self.false_alarm_pixels += res.false_alarm_pixels
        for i, t in enumerate(self.roc_thresholds):
            r = res if t == self.threshold else self._match(prob > t, gt_centroids)
            self._roc_matched[i] += r.n_matched
            self._roc_false_alarm[i] += r.false_alarm_pixels

    def _match(self, pred: np.ndarray, gt_centroids: np.ndarray) -> MatchResult:
        _, _, areas, centroids = label_targets(pred)
        return _match_components(gt_centroids, areas, centroids, self.max_dist)

    def compute(self) -> dict[str, float | int]:
        """Return the figures accumulated since the last reset.

        Returns:
            Dict with ``iou``, ``niou``, ``pd``, ``fa`` (fractions; NaN where undefined, see
            the class docstring), ``fa_1e6`` (``fa * 1e6``), ``n_images``, ``n_targets``,
            ``n_matched``, ``n_pixels``, ``n_false_alarm_pixels`` and ``threshold``.

        """
        fa = _nan_div(self.false_alarm_pixels, self.n_pixels)
        return {
            "iou": _nan_div(self.total_inter, self.total_union),
            "niou": _nan_div(sum(self.per_image_iou), len(self.per_image_iou)),
            "pd": _nan_div(self.n_matched, self.n_targets),
            "fa": fa,
            "fa_1e6": fa * 1e6,
            "n_images": self.n_images,
            "n_targets": self.n_targets,
            "n_matched": self.n_matched,
            "n_pixels": self.n_pixels,
            "n_false_alarm_pixels": self.false_alarm_pixels,
            "threshold": self.threshold,
        }

    def roc(self) -> dict[str, list[float]]:
        """Return the Pd-Fa curve over ``roc_thresholds``.

        Returns:
            Dict of equal-length lists: ``thresholds``, ``pd``, ``fa``, ``fa_1e6`` (NaN where
            undefined, as in ``compute``).

        """
        pd = [_nan_div(k, self.n_targets) for k in self._roc_matched]
        fa = [_nan_div(k, self.n_pixels) for k in self._roc_false_alarm]
        return {
            "thresholds": list(self.roc_thresholds),
            "pd": pd,
            "fa": fa,
            "fa_1e6": [f * 1e6 for f in fa],
        }
