"""The study's PNG figures (matplotlib's Agg canvas, no pyplot), one set per dataset.

- ``iou_bars_<ds>.png``: mean test IoU per row (best-on-val weights), sample-std error bars,
  per-seed points, the teacher as a horizontal line.
- ``val_curves_<ds>.png``: validation IoU against epoch, mean over seeds per row.
- ``pd_fa_<ds>.png``: Pd against Fa per run, coloured by row.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from irkd.files import atomic_path
from irkd.study.results import read_json

__all__ = ["write_plots"]


def _figure(size: tuple[float, float] = (7.0, 4.5)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save a PNG atomically (:func:`irkd.files.atomic_path`)."""
    with atomic_path(path, keep_suffix=False) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _rows(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*entry["methods"], *({**r, "ablation": True} for r in entry["ablations"])]


def _iou_bars(ds: str, entry: Mapping[str, Any], path: Path) -> Path:
    rows = _rows(entry)
    fig = _figure((max(5.0, 1.1 * len(rows) + 2.0), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(rows):
        stat = r["best"]["iou"]
        if stat["mean"] is None:
            continue
        ax.bar(
            i,
            100 * stat["mean"],
            yerr=None if stat["std"] is None else 100 * stat["std"],
            capsize=4,
            color="tab:orange" if r.get("ablation") else "tab:blue",
            alpha=0.7,
        )
        vals = [100 * v for v in stat["values"].values()]
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    t = entry["teacher"]
    if t is not None and t["done"] and t["best"]["iou"] is not None:
        ax.axhline(100 * t["best"]["iou"], color="tab:red", linestyle="--", label="teacher")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["row"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("test IoU % (best-on-val weights)")
    ax.set_title(f"{ds}: mean ± std over seeds, dots = seeds")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _val_curve(results: Path, run_ids: list[str]) -> tuple[list[int], list[float]]:
    per_epoch: dict[int, list[float]] = {}
    for run_id in run_ids:
        summary = read_json(results / "runs" / run_id / "log_summary.json") or {}
        for e in summary.get("epochs", []):
            val = e.get("val") or {}
            if val.get("iou") is not None:
                per_epoch.setdefault(int(e["epoch"]), []).append(100 * float(val["iou"]))
    epochs = sorted(per_epoch)
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def _val_curves(ds: str, entry: Mapping[str, Any], results: Path, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for r in _rows(entry):
        x, y = _val_curve(results, r["run_ids"])
        if x:
            ax.plot(
                x,
                y,
                marker="o",
                markersize=3,
                linestyle=":" if r.get("ablation") else "-",
                label=f"{r['row']} (n={r['n']})",
            )
    t = entry["teacher"]
    if t is not None and t["done"]:
        x, y = _val_curve(results, [t["run_id"]])
        if x:
            ax.plot(x, y, color="black", linestyle="--", label="teacher")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation IoU %")
    ax.set_title(f"{ds}: validation IoU, mean over seeds")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _pd_fa(ds: str, entry: Mapping[str, Any], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for r in _rows(entry):
        pd, fa = r["best"]["pd"]["values"], r["best"]["fa_1e6"]["values"]
        seeds = [s for s in pd if s in fa]
        if seeds:
            ax.scatter(
                [fa[s] for s in seeds],
                [100 * pd[s] for s in seeds],
                label=r["row"],
                marker="s" if r.get("ablation") else "o",
            )
    t = entry["teacher"]
    if t is not None and t["done"] and t["best"]["pd"] is not None:
        ax.scatter(
            [t["best"]["fa_1e6"]],
            [100 * t["best"]["pd"]],
            marker="*",
            s=120,
            color="black",
            label="teacher",
        )
    ax.set_xlabel("Fa x 1e-6")
    ax.set_ylabel("Pd %")
    ax.set_title(f"{ds}: test Pd against Fa per run (best-on-val weights)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(table: Mapping[str, Any], results: Path) -> list[Path]:
    """Write the three figures of every dataset of ``table`` into ``results``.

    Args:
        table: The aggregated table (:func:`irkd.study.report.aggregate`).
        results: ``results/<study>`` (the validation curves are read from its runs).

    Returns:
        The PNG files written.
    """
    out = []
    for ds, entry in table["datasets"].items():
        out.append(_iou_bars(ds, entry, results / f"iou_bars_{ds}.png"))
        out.append(_val_curves(ds, entry, results, results / f"val_curves_{ds}.png"))
        out.append(_pd_fa(ds, entry, results / f"pd_fa_{ds}.png"))
    return out
