"""``irkd data check`` and ``irkd data synth``: inspect or generate datasets."""

from __future__ import annotations

import argparse

from irkd.cli.common import EXIT_FAIL, EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data`` and its actions ``check`` and ``synth`` to the subcommands."""
    data = sub.add_parser("data", help="inspect or generate datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    check = dsub.add_parser("check", help="report every problem of a dataset folder at once")
    check.add_argument("root", help="dataset folder (images/, masks/, train.txt, test.txt)")
    check.add_argument("--layout", default="auto", choices=["auto", "irkd", "basicirstd"])
    check.add_argument("--json", help="also write the report as JSON to this file")
    check.set_defaults(func=run)

    synth = dsub.add_parser("synth", help="generate the built-in synthetic IRSTD dataset")
    synth.add_argument("out", help="output folder (must be empty or absent)")
    synth.add_argument("--n", type=int, default=400, help="number of images (default 400)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--test-fraction", type=float, default=0.5)
    synth.add_argument("--empty-fraction", type=float, default=0.1, help="images without target")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    synth.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd data ACTION``; returns the exit status."""
    return _check(args) if args.data_command == "check" else _synth(args)


def _check(args: argparse.Namespace) -> int:
    """Report every problem of a dataset folder; exit 1 if it has errors."""
    from irkd.data import check_dataset, format_report

    report = check_dataset(args.root, layout=args.layout)
    print(format_report(report))
    if args.json:
        from irkd.files import write_json_atomic

        write_json_atomic(args.json, report.to_dict())
    return EXIT_OK if report.ok else EXIT_FAIL


def _synth(args: argparse.Namespace) -> int:
    """Write the synthetic dataset."""
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
