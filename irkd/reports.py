"""Report helpers: JSON-ready values, ROC plots and one-line metric summaries.

Atomic writes of JSON and text files live in :mod:`irkd.files`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Convert an object tree to plain JSON types.

    Numpy scalars become Python numbers, numpy arrays and tuples/sets become lists, paths
    become strings, mapping keys become strings, and non-finite floats (NaN, +-inf) become
    ``None`` (JSON ``null``).

    Args:
        obj: Any tree of dicts, lists, tuples, numbers, strings, numpy values and paths.

    Returns:
        The converted tree.

    Raises:
        TypeError: For an object with no JSON form.

    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return [to_jsonable(v) for v in items]
    raise TypeError(f"object of type {type(obj).__name__} has no JSON form: {obj!r}")


def plot_roc(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    log_x: bool = False,
) -> Path:
    """Plot Pd against Fa (x 1e-6) for one or more ROC curves and save a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).

    Args:
        curves: Name -> ROC dict with ``pd`` and ``fa_1e6`` (or ``fa``) lists, as returned by
            ``IRSTDMetrics.roc``. NaN points are skipped; on a log axis, so are Fa = 0 points.
        path: Output PNG file (its folder is created if missing).
        title: Optional figure title.
        log_x: Use a logarithmic Fa axis.

    Returns:
        The output path.

    Raises:
        ValueError: If a curve lacks ``pd`` or both Fa keys, or its lists differ in length.

    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        if "pd" not in curve or not ("fa_1e6" in curve or "fa" in curve):
            raise ValueError(f"curve {name!r} needs 'pd' and 'fa_1e6' (or 'fa') lists")
        pd = np.asarray(curve["pd"], dtype=np.float64)
        if "fa_1e6" in curve:
            fa = np.asarray(curve["fa_1e6"], dtype=np.float64)
        else:
            fa = np.asarray(curve["fa"], dtype=np.float64) * 1e6
        if pd.shape != fa.shape:
            raise ValueError(f"curve {name!r}: pd and fa lengths differ ({pd.size} vs {fa.size})")
        keep = np.isfinite(pd) & np.isfinite(fa)
        if log_x:
            keep &= fa > 0
        order = np.argsort(fa[keep], kind="stable")
        ax.plot(fa[keep][order], pd[keep][order], marker="o", markersize=3, label=str(name))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("Fa (x 1e-6)")
    ax.set_ylabel("Pd")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "nan"
    v = float(value)
    return f"{v * scale:.{digits}f}" if math.isfinite(v) else "nan"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Summarise a metrics dict (``IRSTDMetrics.compute`` output) on one line.

    Example: ``IoU 75.12% | nIoU 74.80% | Pd 95.41% | Fa 12.34e-6 | 214 images, 240 targets``.

    Args:
        metrics: Dict with ``iou``, ``niou``, ``pd`` and ``fa_1e6`` (or ``fa``); the counts
            ``n_images`` and ``n_targets`` are shown where present. Missing or NaN -> ``nan``.

    Returns:
        The summary line.

    """
    fa_1e6 = metrics.get("fa_1e6")
    if fa_1e6 is None and metrics.get("fa") is not None:
        fa_1e6 = float(metrics["fa"]) * 1e6
    parts = [
        f"IoU {_fmt(metrics.get('iou'), 100)}%",
        f"nIoU {_fmt(metrics.get('niou'), 100)}%",
        f"Pd {_fmt(metrics.get('pd'), 100)}%",
        f"Fa {_fmt(fa_1e6)}e-6",
    ]
    counts = []
    if metrics.get("n_images") is not None:
        counts.append(f"{int(metrics['n_images'])} images")
    if metrics.get("n_targets") is not None:
        counts.append(f"{int(metrics['n_targets'])} targets")
    if counts:
        parts.append(", ".join(counts))
    return " | ".join(parts)
