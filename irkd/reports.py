"""Report helpers: JSON-ready values, ROC plots, one-line metric summaries, the model table.

Atomic writes of JSON and text files live in :mod:`irkd.files`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "to_jsonable",
    "plot_roc",
    "format_metrics",
    "MACS_NOTE",
    "param_mismatch",
    "format_model_table",
]


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


MACS_NOTE = (
    "MACs: multiply-accumulates of Conv2d/Linear layers only (out_elements * in_ch/groups * kh"
    " * kw), no bias, BatchNorm, activation, pooling or resize ops, counted on the PyTorch twin."
    "\nthop (G): the convention of thop, which BasicIRSTD's published figures use: convolutions"
    " plus BatchNorm (4/element), bilinear resizes (11/output element) and global average"
    " pooling (BasicIRSTD publishes 14.26 G for DNANet at 1x1x256x256)."
)


def param_mismatch(row: Mapping[str, Any]) -> str | None:
    """The warning line of a network whose twins count different parameters, else None.

    Args:
        row: A row of ``irkd models`` (``name``, ``params``, ``params_mindspore`` or None).
    """
    if row["params_mindspore"] is None or row["params_mindspore"] == row["params"]:
        return None
    return (
        f"  WARNING {row['name']}: PyTorch has {row['params']:,} parameters, "
        f"MindSpore {row['params_mindspore']:,}"
    )


def format_model_table(rows: Sequence[Mapping[str, Any]], shape: Sequence[int]) -> str:
    """The table of ``irkd models``: one line per network, then what the MACs count.

    Args:
        rows: One dict per network: ``name``, ``family``, ``role``, ``params``,
            ``params_mindspore``, ``macs``, ``ops_thop``, ``macs_vs_teacher`` (or None),
            ``stage_channels`` and ``summary``.
        shape: The input ``B, C, H, W`` the MACs were counted at.

    Returns:
        The table; a warning line follows a network whose parameter counts differ between
        the MindSpore and PyTorch twins.
    """
    header = (
        "name",
        "family",
        "role",
        "params (M)",
        "MACs (G)",
        "thop (G)",
        "vs teacher",
        "stages",
        "summary",
    )
    table = [
        (
            r["name"],
            r["family"],
            r["role"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['macs'] / 1e9:.2f}",
            f"{r['ops_thop'] / 1e9:.2f}",
            f"{100 * r['macs_vs_teacher']:.1f}%" if r["macs_vs_teacher"] is not None else "-",
            "-".join(str(r["stage_channels"][f"enc{i}"]) for i in range(5)),
            r["summary"],
        )
        for r in rows
    ]
    cols = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
    right = {3, 4, 5, 6}

    def fmt(cells: Sequence[str]) -> str:
        out = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, cols, strict=True))
        ]
        return "  ".join(out).rstrip()

    lines = [f"registered networks, input {'x'.join(str(s) for s in shape)}", fmt(header)]
    lines.append(fmt(["-" * w for w in cols]))
    for r, cells in zip(rows, table, strict=True):
        lines.append(fmt(cells))
        warning = param_mismatch(r)
        if warning is not None:
            lines.append(warning)
    lines.append(MACS_NOTE)
    return "\n".join(lines)
