"""``irkd score``: score saved prediction maps against a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from irkd.cli.common import EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``score`` to the subcommands."""
    score = sub.add_parser("score", help="score saved prediction maps against a dataset")
    score.add_argument("pred_dir", help="folder with <id>.png prediction maps (8-bit)")
    score.add_argument("--data", required=True, help="dataset folder")
    score.add_argument("--split", default="test")
    score.add_argument("--layout", default="auto", choices=["auto", "irkd", "basicirstd"])
    score.add_argument("--threshold", type=float, default=0.5)
    score.add_argument("--out", help="metrics JSON (default PRED_DIR/metrics.json)")
    score.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd score``: print the metrics and write them as JSON; returns the exit status."""
    from irkd.files import write_json_atomic
    from irkd.metrics.score import score_predictions
    from irkd.reports import format_metrics

    result = score_predictions(
        args.pred_dir, args.data, args.split, threshold=args.threshold, layout=args.layout
    )
    print(format_metrics(result))
    out = Path(args.out) if args.out else Path(args.pred_dir) / "metrics.json"
    write_json_atomic(out, result)
    print(f"metrics written to {out}")
    return EXIT_OK
