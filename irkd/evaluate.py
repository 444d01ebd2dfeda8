"""Framework-free evaluation: scoring a network on a split, and the reports on disk.

A network is any numpy callable (:data:`Forward`). :func:`predict_split` runs it over a
split at native resolution (sigmoid probabilities of full padded images cropped back),
:class:`Evaluator` / :func:`evaluate_predictions` score them with
:class:`irkd.metrics.IRSTDMetrics`, and :func:`test_metrics` scores a run's prepared TEST
split.

:func:`evaluate_split` runs a network over a split and writes the report with
:func:`write_eval_report`:

- ``metrics.json``: IoU, nIoU, Pd, Fa (and ``fa_1e6``), the counts, the ROC points and
  whatever context the caller adds (weights, network, split);
- ``roc.png``: Pd against Fa (x 1e-6) over the thresholds of :class:`IRSTDMetrics`;
- ``samples/<id>.png``: one figure per chosen image, side by side: the image, the ground
  truth, the prediction (probability map with the 0.5 contour of the ground truth), and,
  when given, the teacher's MSA attention map of each distilled stage as a heat map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from irkd.data import IRSTDDataset, crop_back, iter_eval
from irkd.files import write_json_atomic
from irkd.metrics import IRSTDMetrics
from irkd.progress import progress
from irkd.reports import plot_roc

if TYPE_CHECKING:
    from irkd.data.prepare import PreparedData

__all__ = [
    "Evaluator",
    "Forward",
    "Sample",
    "choose_ids",
    "evaluate_predictions",
    "evaluate_split",
    "predict_split",
    "render_sample",
    "sigmoid",
    "summary_metrics",
    "test_metrics",
    "write_eval_report",
]

Forward = Callable[[np.ndarray], np.ndarray]
"""A numpy -> numpy logits callable, ``(1, 1, H, W)`` float32 in and out."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32 out."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = 1.0 / (1.0 + np.exp(-x))
    return out.astype(np.float32)


def predict_split(
    dataset: IRSTDDataset,
    forward: Callable[[np.ndarray], np.ndarray],
    *,
    mean: float,
    std: float,
    multiple: int = 32,
    desc: str | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Run a network over a split at native resolution.

    Each image is normalised and padded (:func:`irkd.data.iter_eval`), ``forward`` maps the
    (1, 1, Hp, Wp) float32 array to logits of the same shape (a numpy array), the sigmoid is
    applied and the padding cropped back.

    Yields:
        (id, probability float32 (H, W), mask uint8 (H, W)).
    """
    items = iter_eval(dataset, mean=mean, std=std, multiple=multiple)
    for id_, x, mask, hw in progress(items, total=len(dataset), desc=desc or "eval", leave=False):
        logits = np.asarray(forward(x))
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"predict_split: network output {logits.shape} does not match input {x.shape}"
            )
        prob = crop_back(sigmoid(logits.reshape(x.shape[-2:])), hw)
        yield id_, np.ascontiguousarray(prob), mask


class Evaluator:
    """Accumulate IRSTD metrics over (id, prob, mask) and keep chosen probability maps.

    Args:
        threshold: Pixel threshold (``prob > threshold``).
        keep: Ids whose probability maps are kept in :attr:`kept` (for sample figures).
    """

    def __init__(self, *, threshold: float = 0.5, keep: Iterable[str] = ()) -> None:
        self.metrics = IRSTDMetrics(threshold=threshold)
        self.keep = set(keep)
        self.kept: dict[str, np.ndarray] = {}
        self.ids: list[str] = []

    def update(self, id_: str, prob: np.ndarray, mask: np.ndarray) -> None:
        """Add one image."""
        self.metrics.update(prob, mask)
        self.ids.append(id_)
        if id_ in self.keep:
            self.kept[id_] = prob

    def result(self) -> dict[str, Any]:
        """The metrics, ROC, ids seen and kept maps.

        Returns:
            ``{"metrics": IRSTDMetrics.compute(), "roc": IRSTDMetrics.roc(), "ids": [...],
            "kept": {id: prob}}``.
        """
        return {
            "metrics": self.metrics.compute(),
            "roc": self.metrics.roc(),
            "ids": list(self.ids),
            "kept": dict(self.kept),
        }


def evaluate_predictions(
    pred_iter: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    threshold: float = 0.5,
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Score an iterator of (id, prob (H, W), mask (H, W)) such as :func:`predict_split`.

    Returns:
        ``{"metrics", "roc", "ids", "kept"}`` (see :meth:`Evaluator.result`); the metrics
        dict has ``iou``, ``niou``, ``pd``, ``fa``, ``fa_1e6`` and the counts.
    """
    ev = Evaluator(threshold=threshold, keep=keep)
    for id_, prob, mask in pred_iter:
        ev.update(id_, prob, mask)
    return ev.result()


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of a metrics dict: IoU, nIoU, Pd, Fa (x 1e-6) and counts."""
    keys = ("iou", "niou", "pd", "fa", "fa_1e6", "n_images", "n_targets")
    return {k: metrics.get(k) for k in keys}


def test_metrics(data: PreparedData, forward: Forward) -> dict[str, Any]:
    """Score a :data:`Forward` on the TEST split (``{"metrics", "roc", "ids", "kept"}``)."""
    return evaluate_predictions(
        predict_split(
            data.test_set(),
            forward,
            mean=data.mean,
            std=data.std,
            multiple=data.multiple,
            desc="test",
        )
    )


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
