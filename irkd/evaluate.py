"""Framework-free evaluation reports: metrics JSON, the Pd-Fa ROC plot, sample figures.

:func:`evaluate_split` runs any backend's network (given as a numpy callable) over a split and
writes the report with :func:`write_eval_report`:

- ``metrics.json``: IoU, nIoU, Pd, Fa (and ``fa_1e6``), the counts, the ROC points and
  whatever context the caller adds (weights, network, split);
- ``roc.png``: Pd against Fa (x 1e-6) over the thresholds of :class:`IRSTDMetrics`;
- ``samples/<id>.png``: one figure per chosen image, side by side: the image, the ground
  truth, the prediction (probability map with the 0.5 contour of the ground truth), and,
  when given, the teacher's MSA attention map of each distilled stage as a heat map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from irkd.data import IRSTDDataset, crop_back, iter_eval
from irkd.engine import Evaluator, progress, sigmoid, summary_metrics
from irkd.reports import plot_roc, write_json_atomic

__all__ = ["Sample", "choose_ids", "evaluate_split", "render_sample", "write_eval_report"]


@dataclass
class Sample:
    """One image of a report figure.

    Attributes:
        id: Image id.
        image: uint8 (H, W) grayscale image.
        mask: (H, W) ground truth (> 0 is target).
        prob: float (H, W) predicted probability.
        msa: Stage name -> (H, W) teacher attention map (may be empty).
    """

    id: str
    image: np.ndarray
    mask: np.ndarray
    prob: np.ndarray
    msa: dict[str, np.ndarray] = field(default_factory=dict)


def choose_ids(ids: Sequence[str], n: int) -> list[str]:
    """``n`` ids spread evenly over ``ids`` (all of them when ``n >= len(ids)``)."""
    ids = list(ids)
    if n <= 0 or not ids:
        return []
    if n >= len(ids):
        return ids
    idx = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in sorted(set(idx.tolist()))]


def render_sample(sample: Sample, path: str | os.PathLike[str], *, threshold: float = 0.5) -> Path:
    """Write one side-by-side figure (image | ground truth | prediction | MSA maps).

    Uses matplotlib's Agg canvas (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        ("image", sample.image, {"cmap": "gray"}),
        ("ground truth", (np.asarray(sample.mask) > 0).astype(np.float32), {"cmap": "gray"}),
        (
            f"prediction (p>{threshold:g}: {int((sample.prob > threshold).sum())} px)",
            sample.prob,
            {"cmap": "gray", "vmin": 0.0, "vmax": 1.0},
        ),
    ]
    for stage, m in sample.msa.items():
        panels.append((f"teacher MSA {stage}", m, {"cmap": "inferno"}))
    h, w = sample.image.shape[:2]
    side = 3.0
    fig = Figure(figsize=(side * len(panels), side * h / max(w, 1) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, arr, kw) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        im = ax.imshow(arr, interpolation="nearest", **kw)
        if title.startswith("prediction") and np.any(sample.mask):
            ax.contour(np.asarray(sample.mask) > 0, levels=[0.5], colors="lime", linewidths=0.6)
        if title.startswith("teacher"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(sample.id, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def write_eval_report(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    roc: Mapping[str, Any],
    samples: Sequence[Sample] = (),
    *,
    context: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``roc.png`` and ``samples/<id>.png`` into ``out_dir``.

    Args:
        out_dir: Report folder (created).
        metrics: ``IRSTDMetrics.compute()`` output.
        roc: ``IRSTDMetrics.roc()`` output.
        samples: Figures to draw.
        context: Extra fields for ``metrics.json`` (weights, network, split, ...).
        title: Title of the ROC plot.

    Returns:
        The dict written to ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        **dict(context or {}),
        **summary_metrics(metrics),
        "metrics": dict(metrics),
        "roc": dict(roc),
        "samples": [s.id for s in samples],
    }
    write_json_atomic(out / "metrics.json", report)
    # Log Fa axis: the curve spans several decades (threshold 0 marks every pixel).
    plot_roc({title or "model": roc}, out / "roc.png", title=title, log_x=True)
    for s in samples:
        render_sample(s, out / "samples" / f"{s.id}.png")
    return report


def evaluate_split(
    dataset: IRSTDDataset,
    forward: Callable[[np.ndarray], np.ndarray],
    *,
    mean: float,
    std: float,
    out_dir: str | os.PathLike[str],
    multiple: int = 32,
    sample_ids: Sequence[str] = (),
    msa: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
    context: Mapping[str, Any] | None = None,
    threshold: float = 0.5,
    title: str | None = None,
) -> dict[str, Any]:
    """Evaluate a network over a split and write the report.

    Args:
        dataset: The split.
        forward: Padded normalised (1, 1, Hp, Wp) float32 -> logits of that shape (numpy).
        mean: Normalisation mean (the training split's).
        std: Normalisation std.
        out_dir: Report folder.
        multiple: Padding multiple.
        sample_ids: Ids to draw (must belong to the split).
        msa: Optional padded image -> stage -> (Hp, Wp) teacher attention map (for figures).
        context: Extra fields for ``metrics.json``.
        threshold: Pixel threshold.
        title: ROC title.

    Returns:
        The dict written to ``metrics.json``.
    """
    unknown = [i for i in sample_ids if i not in set(dataset.ids)]
    if unknown:
        raise ValueError(
            f"sample ids not in split {dataset.split!r} of {dataset.root}: {', '.join(unknown)}"
        )
    wanted = set(sample_ids)
    ev = Evaluator(threshold=threshold)
    samples: dict[str, Sample] = {}
    items = iter_eval(dataset, mean=mean, std=std, multiple=multiple)
    for id_, x, mask, hw in progress(items, total=len(dataset), desc="eval", leave=False):
        logits = np.asarray(forward(x))
        prob = np.ascontiguousarray(crop_back(sigmoid(logits.reshape(x.shape[-2:])), hw))
        ev.update(id_, prob, mask)
        if id_ in wanted:
            maps = {}
            if msa is not None:
                maps = {k: crop_back(np.asarray(v), hw) for k, v in msa(x).items()}
            samples[id_] = Sample(id_, dataset.load(id_).image, mask, prob, maps)
    res = ev.result()
    ordered = [samples[i] for i in sample_ids if i in samples]
    ctx = {"split": dataset.split, "dataset": str(dataset.root), **dict(context or {})}
    return write_eval_report(out_dir, res["metrics"], res["roc"], ordered, context=ctx, title=title)
