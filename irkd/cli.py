"""The ``irkd`` command line.

Every subcommand builds its own arguments (no global argparse state) and imports a
framework only inside its handler, so ``irkd data check`` never loads MindSpore or PyTorch.
A subcommand that is not built yet says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

_PLANNED = {
    "train": "train one network alone (teacher, or a student baseline)",
    "distill": "distill a student from a frozen teacher",
    "eval": "evaluate a checkpoint on a split",
    "export": "export MindIR / ONNX artifacts",
    "parity": "run the cross-framework parity checks",
    "release": "build a gated release for Ascend and Jetson",
    "bench": "measure latency of teacher and students",
    "models": "list the registered networks",
}


def _cmd_data_check(args: argparse.Namespace) -> int:
    from irkd.data import check_dataset, format_report

    report = check_dataset(args.root, layout=args.layout)
    print(format_report(report))
    if args.json:
        from irkd.reports import write_json_atomic

        write_json_atomic(args.json, report.to_dict())
    return EXIT_OK if report.ok else EXIT_FAIL


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from irkd.data import synthesize

    out = synthesize(
        args.out,
        args.n,
        seed=args.seed,
        size=args.size,
        test_fraction=args.test_fraction,
        empty_fraction=args.empty_fraction,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.n} synthetic images to {out}")
    return EXIT_OK


def _cmd_score(args: argparse.Namespace) -> int:
    from irkd.metrics.score import score_predictions
    from irkd.reports import format_metrics, write_json_atomic

    result = score_predictions(
        args.pred_dir, args.data, args.split, threshold=args.threshold, layout=args.layout
    )
    print(format_metrics(result))
    out = Path(args.out) if args.out else Path(args.pred_dir) / "metrics.json"
    write_json_atomic(out, result)
    print(f"metrics written to {out}")
    return EXIT_OK


def _not_built(name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        print(f"irkd {name}: not built yet ({_PLANNED[name]}).", file=sys.stderr)
        return EXIT_USAGE

    return handler


def build_parser() -> argparse.ArgumentParser:
    """Build a fresh parser (callers may build as many as they like)."""
    parser = argparse.ArgumentParser(
        prog="irkd",
        description="Knowledge distillation for infrared small target detection "
        "(MindSpore native, PyTorch mirror).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser("data", help="inspect or generate datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    check = dsub.add_parser("check", help="report every problem of a dataset folder at once")
    check.add_argument("root", help="dataset folder (images/, masks/, train.txt, test.txt)")
    check.add_argument("--layout", default="auto", choices=["auto", "irkd", "basicirstd"])
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=_cmd_data_check)

    synth = dsub.add_parser("synth", help="generate the built-in synthetic IRSTD dataset")
    synth.add_argument("out", help="output folder (must be empty or absent)")
    synth.add_argument("--n", type=int, default=400, help="number of images (default 400)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--test-fraction", type=float, default=0.5)
    synth.add_argument("--empty-fraction", type=float, default=0.1, help="images without target")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    synth.set_defaults(func=_cmd_data_synth)

    score = sub.add_parser("score", help="score saved prediction maps against a dataset")
    score.add_argument("pred_dir", help="folder with <id>.png prediction maps (8-bit)")
    score.add_argument("--data", required=True, help="dataset folder")
    score.add_argument("--split", default="test")
    score.add_argument("--layout", default="auto", choices=["auto", "irkd", "basicirstd"])
    score.add_argument("--threshold", type=float, default=0.5)
    score.add_argument("--out", help="metrics JSON (default PRED_DIR/metrics.json)")
    score.set_defaults(func=_cmd_score)

    for name, text in _PLANNED.items():
        p = sub.add_parser(name, help=f"{text} (not built yet)")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_built(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``irkd`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Input errors (dataset, config, files) are the user's to fix: one clear line,
        # no traceback. Anything else is a bug and keeps its traceback.
        print(f"irkd: error: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
