"""Aggregate a study's committed per-run files into ``table.json/md`` and ``tuning.json/md``.

Everything here reads only ``results/<study>/runs/<id>/metrics.json`` (and the plan, which
says which run stands for which row and seed), so ``irkd study --report`` works on a clone
without the git-ignored run folders. Metrics: test IoU, nIoU, Pd (fractions) and Fa x 1e-6,
for the best-on-validation weights (``best``) and the last epoch's (``last``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irkd.reports import to_jsonable
from irkd.study.plan import Plan
from irkd.study.results import done_metrics
from irkd.study.spec import Study

__all__ = ["METRICS", "aggregate", "format_table", "format_tuning", "mean_std", "tuning_report"]

METRICS = ("iou", "niou", "pd", "fa_1e6")
KINDS = ("best", "last")
TABLES = ("methods", "ablations")
_LABEL = {"iou": "IoU %", "niou": "nIoU %", "pd": "Pd %", "fa_1e6": "Fa x1e-6"}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std"}`` (sample std, ddof=1; None for fewer than two values)."""
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "mean": statistics.fmean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
    }


def figures(metrics: Mapping[str, Any], kind: str) -> dict[str, float | None]:
    """The four metrics of a run's ``metrics.json``: best-on-val (top level) or ``last``."""
    src = metrics if kind == "best" else (metrics.get("last") or {})
    return {m: src.get(m) for m in METRICS}


def _run_figures(results: Path, run_id: str | None) -> dict[str, Any] | None:
    if run_id is None:
        return None
    m = done_metrics(results / "runs" / run_id)
    if m is None:
        return None
    return {k: figures(m, k) for k in KINDS}


def _chain(plan: Plan, run_id: str) -> list[str]:
    """The run ids of a student trained in steps, first step first (one id: one step)."""
    chain = [run_id]
    while (run := plan.runs.get(chain[0])) is not None and run.init is not None:
        chain.insert(0, run.init)
    return chain


def _val(results: Path, run_id: str) -> float | None:
    m = done_metrics(results / "runs" / run_id)
    v = None if m is None else m.get("best_val")
    return None if v is None else float(v)


def _steps(
    study: Study, plan: Plan, results: Path, runs: Mapping[int, str]
) -> list[dict[str, Any]]:
    """Per step of a row's students: test IoU (best-on-val weights) and validation IoU."""
    chains = {s: _chain(plan, r) for s, r in runs.items()}
    n = max((len(c) for c in chains.values()), default=1)
    if n < 2:
        return []
    out: list[dict[str, Any]] = []
    prev: dict[int, float] = {}
    for k in range(n):
        iou: dict[int, float] = {}
        val: dict[int, float] = {}
        ids = {}
        for seed, chain in chains.items():
            ids[seed] = chain[k]
            figs = _run_figures(results, chain[k])
            if figs is not None and figs["best"]["iou"] is not None:
                iou[seed] = figs["best"]["iou"]
            v = _val(results, chain[k])
            if v is not None:
                val[seed] = v
        diff = {s: iou[s] - prev[s] for s in iou if s in prev}
        out.append(
            {
                "step": k + 1,
                "run_ids": [ids[s] for s in sorted(ids)],
                "iou": {**mean_std(list(iou.values())), "values": {str(s): iou[s] for s in iou}},
                "val_iou": {
                    **mean_std(list(val.values())),
                    "values": {str(s): val[s] for s in val},
                },
                "diff_to_step_before": {
                    **mean_std(list(diff.values())),
                    "n_positive": sum(1 for v in diff.values() if v > 0),
                },
            }
        )
        prev = iou
    return out


def _row(
    study: Study,
    plan: Plan,
    results: Path,
    shown: str,
    ds: str,
    table: str,
    row: str,
    teacher: dict[str, Any] | None,
) -> dict[str, Any]:
    per_seed: dict[int, dict[str, Any]] = {}
    runs: dict[int, str] = {}
    for seed in study.seeds:
        run_id = plan.cells.get((ds, table, row, seed))
        figs = _run_figures(results, run_id)
        if figs is not None and run_id is not None:
            per_seed[seed] = figs
            runs[seed] = run_id
    ref = {}
    for seed in study.seeds:
        figs = _run_figures(results, plan.cells.get((ds, "methods", study.reference, seed)))
        if figs is not None:
            ref[seed] = figs
    out: dict[str, Any] = {
        "row": row,
        "n": len(per_seed),
        "seeds": sorted(per_seed),
        "missing_seeds": [s for s in study.seeds if s not in per_seed],
        "run_ids": [runs[s] for s in sorted(runs)],
        "runs": [f"{shown}/runs/{runs[s]}" for s in sorted(runs)],
        "val_iou": mean_std([v for s in sorted(runs) if (v := _val(results, runs[s])) is not None]),
        "steps": _steps(study, plan, results, runs),
    }
    for kind in KINDS:
        stats = {}
        diff = {}
        gap = {}
        for m in METRICS:
            vals = {s: f[kind][m] for s, f in per_seed.items() if f[kind][m] is not None}
            stats[m] = {**mean_std(list(vals.values())), "values": {str(s): vals[s] for s in vals}}
            d = {
                s: vals[s] - ref[s][kind][m]
                for s in vals
                if s in ref and ref[s][kind][m] is not None
            }
            diff[m] = {
                **mean_std(list(d.values())),
                "per_seed": {str(s): d[s] for s in sorted(d)},
                "n_positive": sum(1 for v in d.values() if v > 0),
            }
            t = None if teacher is None else teacher[kind][m]
            mean = stats[m]["mean"]
            gap[m] = None if t is None or mean is None else mean - t
        out[kind] = stats
        out[f"diff_{kind}"] = diff
        out[f"gap_to_teacher_{kind}"] = gap
    return out


def aggregate(study: Study, plan: Plan, results: Path, shown: str) -> dict[str, Any]:
    """The study's tables from the committed per-run files.

    Args:
        study: The study.
        plan: Its plan (which run stands for which cell).
        results: ``results/<study>`` (read: ``runs/<id>/metrics.json``).
        shown: How ``results`` is written in the table (e.g. ``results/nudt-cpu``).

    Returns:
        ``{"study", "reference", "seeds", "metrics", "datasets": {ds: {"teacher",
        "methods": [row...], "ablations": [row...]}}}``; each row has ``n``, ``seeds``,
        ``runs``, ``best``/``last`` (per metric ``n``, ``mean``, ``std``, ``values`` per seed),
        ``diff_best``/``diff_last`` (paired differences to the reference row, same seed:
        ``per_seed``, ``mean``, ``std``, ``n``, ``n_positive``) and
        ``gap_to_teacher_best``/``_last`` (row mean minus the teacher's figure).
    """
    out: dict[str, Any] = {
        "study": study.name,
        "reference": study.reference,
        "seeds": list(study.seeds),
        "metrics": list(METRICS),
        "fa_unit": "fa_1e6 = false alarms per pixel x 1e6",
        "datasets": {},
    }
    for ds in study.datasets:
        t_id = plan.teachers.get(ds)
        t_figs = _run_figures(results, t_id)
        teacher = None
        if t_id is not None:
            teacher = {"run_id": t_id, "run": f"{shown}/runs/{t_id}", "done": t_figs is not None}
            teacher.update(t_figs or {k: None for k in KINDS})
        entry: dict[str, Any] = {"teacher": teacher}
        for table in TABLES:
            rows = study.methods if table == "methods" else study.ablations
            entry[table] = [
                _row(study, plan, results, shown, ds, table, name, t_figs)
                for name, row in rows.items()
                if row.on(ds)
            ]
        out["datasets"][ds] = entry
    return to_jsonable(out)


def tuning_report(study: Study, plan: Plan) -> dict[str, Any]:
    """Every tried combination with its validation IoU, and the winner per row and dataset."""
    out: dict[str, Any] = {"seed": study.tuning.seed if study.tuning else None, "datasets": {}}
    for (ds, row), entry in plan.tuning.items():
        combos = [
            {"overrides": list(items), "run_id": run, "val_iou": val, "done": done}
            for items, run, val, done in zip(
                entry.combos, entry.runs, entry.val, entry.done, strict=True
            )
        ]
        winner = None
        if entry.winner is not None:
            winner = {"index": entry.winner, **combos[entry.winner]}
        out["datasets"].setdefault(ds, {})[row] = {"combos": combos, "winner": winner}
    return to_jsonable(out)


# ----------------------------------------------------------------------------- markdown


def _pct(m: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if m != "fa_1e6" else f"{v:.1f}"


def _ms(m: str, stat: Mapping[str, Any], *, signed: bool = False) -> str:
    if stat.get("mean") is None:
        return "-"
    std = stat.get("std")
    mean = _pct(m, stat["mean"])
    if signed and not mean.startswith("-"):
        mean = "+" + mean
    return mean + ("" if std is None else f" ± {_pct(m, std)}")


def _steps_section(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's students step by step: test IoU (best-on-val), validation IoU, the change."""
    n = max(len(r["steps"]) for r in rows)
    head = ["row"]
    for k in range(1, n + 1):
        head += [f"step {k}: IoU %", f"step {k}: val IoU %"]
        if k > 1:
            head.append(f"ΔIoU step {k - 1} -> {k}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"]]
        for k, step in enumerate(r["steps"]):
            cells += [_ms("iou", step["iou"]), _ms("iou", step["val_iou"])]
            if k:
                d = step["diff_to_step_before"]
                cells.append(_ms("iou", d, signed=True) + f" ({d['n_positive']}/{d['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _section(rows: list[dict[str, Any]], kind: str, reference: str, n_seeds: int) -> list[str]:
    head = ["row", "n", "val IoU %", *(_LABEL[m] for m in METRICS)]
    head += [f"ΔIoU vs {reference}", "ΔIoU > 0"]
    head.append("IoU gap to teacher")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r[f"diff_{kind}"]["iou"]
        gap = r[f"gap_to_teacher_{kind}"]["iou"]
        cells = [
            r["row"],
            f"{r['n']}/{n_seeds}",
            _ms("iou", r["val_iou"]) if kind == "best" else "-",
            *(_ms(m, r[kind][m]) for m in METRICS),
            _ms("iou", d, signed=True),
            f"{d['n_positive']}/{d['n']}" if d["n"] else "-",
            "-" if gap is None else f"{100 * gap:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_table(table: Mapping[str, Any]) -> str:
    """``table.md``: per dataset, the teacher, then main and ablation tables (best, last)."""
    n_seeds = len(table["seeds"])
    ref = table["reference"]
    out = [
        f"# Study {table['study']}",
        "",
        "Test split. mean ± sample std (ddof=1) over seeds; IoU, nIoU, Pd in %, Fa x 1e-6; "
        "val IoU: the validation IoU that chose the best-on-validation weights. "
        f"ΔIoU: paired difference to the `{ref}` row (same seed), in points; `ΔIoU > 0`: "
        "seeds where the row beats it. Gap: row mean minus the teacher. Generated by "
        "`irkd study --report` from `runs/*/metrics.json` (see `table.json`).",
    ]
    for ds, entry in table["datasets"].items():
        out += ["", f"## {ds}", ""]
        t = entry["teacher"]
        if t is None:
            out.append("No teacher.")
        elif not t["done"]:
            out.append(f"Teacher `{t['run_id']}`: not done.")
        else:
            for kind, what in (("best", "best-on-val"), ("last", "last epoch")):
                figs = " | ".join(f"{_LABEL[m]} {_pct(m, t[kind][m])}" for m in METRICS)
                out.append(f"- teacher `{t['run_id']}`, {what}: {figs}")
        for tbl, title in (("methods", "Main table"), ("ablations", "Ablations")):
            if not entry[tbl]:
                continue
            for kind, what in (("best", "best-on-validation weights"), ("last", "last epoch")):
                out += ["", f"### {title}, {what}", ""]
                out += _section(entry[tbl], kind, ref, n_seeds)
            if any(r.get("steps") for r in entry[tbl]):
                out += ["", f"### {title}, step by step (students trained in steps)", ""]
                out.append(
                    "Test IoU of each step's best-on-validation weights, the validation IoU "
                    "that chose them, and the paired change from the step before (seeds up)."
                )
                out += [""] + _steps_section(entry[tbl])
    return "\n".join(out) + "\n"


def format_tuning(tuning: Mapping[str, Any]) -> str:
    """``tuning.md``: every combination with its validation IoU, winner marked."""
    out = [
        f"# Tuning (seed {tuning['seed']})",
        "",
        "Chosen on the best-on-validation IoU only (the test split is never used).",
    ]
    for ds, rows in tuning["datasets"].items():
        for row, entry in rows.items():
            out += [
                "",
                f"## {ds} / {row}",
                "",
                "| overrides | val IoU % | run | |",
                "|---|---|---|---|",
            ]
            win = entry["winner"]["index"] if entry["winner"] else None
            for i, c in enumerate(entry["combos"]):
                val = "-" if c["val_iou"] is None else f"{100 * c['val_iou']:.2f}"
                mark = "**winner**" if i == win else ""
                out.append(f"| `{' '.join(c['overrides'])}` | {val} | `{c['run_id']}` | {mark} |")
    return "\n".join(out) + "\n"
