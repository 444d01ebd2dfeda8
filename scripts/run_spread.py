"""How far apart are runs of a study? Validation and test IoU of every finished run.

For each run folder under ``RESULTS/runs/`` (an ``irkd study`` results folder) prints the
best validation IoU (the checkpoint the study picks), the mean of the last K validation
checks (a less noisy reading of where the run ended), and the test IoU of the chosen and of
the last weights; then the correlation of these columns over the runs, so that one can see
how well the validation split ranks runs on the test split.

    python scripts/run_spread.py results/cpu results/cpu-dev --match 'nudt-*' --exclude '*l2_off-*'

Framework-free: reads ``metrics.json`` and ``log_summary.json`` only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def run_rows(
    results: list[Path], last: int, pattern: str, exclude: list[str]
) -> list[dict[str, float | str]]:
    """One row per finished run (a config hash seen under two names counts once)."""
    rows: list[dict[str, float | str]] = []
    seen: set[str] = set()
    for folder in results:
        for run in sorted((folder / "runs").glob("*")):
            metrics, summary = run / "metrics.json", run / "log_summary.json"
            digest = run.name.rsplit("-", 1)[-1]  # the same config under two names is one run
            if digest in seen or not fnmatch.fnmatch(run.name, pattern):
                continue
            if any(fnmatch.fnmatch(run.name, x) for x in exclude):
                continue
            if not (metrics.is_file() and summary.is_file()):
                continue
            m = json.loads(metrics.read_text())
            epochs = json.loads(summary.read_text())["epochs"]
            checks = [e["val"]["iou"] * 100 for e in epochs if e.get("val")]
            if not checks:
                continue
            seen.add(digest)
            rows.append(
                {
                    "run": run.name,
                    "val_best": max(checks),
                    "val_late": statistics.mean(checks[-last:]),
                    "val_late_sd": statistics.pstdev(checks[-last:]),
                    "test_best": m["iou"] * 100,
                    "test_last": m["last"]["iou"] * 100,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table and the correlations; exit 1 when no finished run matches."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="irkd study results folders")
    ap.add_argument("--last", type=int, default=5, help="validation checks averaged (default 5)")
    ap.add_argument("--match", default="*", help="fnmatch pattern on run ids (default all)")
    ap.add_argument(
        "--exclude", action="append", default=[], help="fnmatch pattern of run ids to leave out"
    )
    args = ap.parse_args(argv)
    rows = run_rows(args.results, args.last, args.match, args.exclude)
    if not rows:
        print(f"run_spread: no finished run matches {args.match!r}", file=sys.stderr)
        return 1
    cols = ["val_best", "val_late", "test_best", "test_last"]
    print(f"| run | val best | val, last {args.last} checks | test (best) | test (last) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {r['val_best']:.2f} | {r['val_late']:.2f} ± {r['val_late_sd']:.2f} "
            f"| {r['test_best']:.2f} | {r['test_last']:.2f} |"
        )
    keep = [r for r in rows if "teacher" not in str(r["run"])]
    if len(keep) >= 3:
        corr = np.corrcoef(np.array([[float(r[c]) for c in cols] for r in keep]).T)
        print(f"\nPearson correlation over {len(keep)} student runs:")
        print("| | " + " | ".join(cols) + " |")
        print("| --- " * (len(cols) + 1) + "|")
        for i, c in enumerate(cols):
            print(f"| {c} | " + " | ".join(f"{corr[i, j]:.2f}" for j in range(len(cols))) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
