"""``irkd parity``: cross-framework parity checks (numpy oracle, MindSpore, PyTorch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from irkd.cli.common import EXIT_FAIL, EXIT_OK, comma_list, timestamp

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``parity`` to the subcommands."""
    par = sub.add_parser(
        "parity",
        help="cross-framework parity checks (numpy oracle, MindSpore, PyTorch); JSON report",
    )
    par.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="FILE",
        help="neutral .safetensors weights to check (repeatable; default: seeded random weights)",
    )
    par.add_argument("--quick", action="store_true", help="the quick set only (what CI runs)")
    par.add_argument("--out", help="report JSON (default runs/parity-<time>.json)")
    par.add_argument(
        "--select", action="append", default=[], metavar="PREFIX", help="case-name prefix"
    )
    par.add_argument(
        "--ms-modes", default="graph,pynative", help="MindSpore modes (default graph,pynative)"
    )
    par.add_argument("--seed", type=int, default=0, help="seed of inputs and random weights")
    par.add_argument("--list", action="store_true", help="list the cases and exit")
    par.add_argument("--tolerances", action="store_true", help="print the tolerance table")
    par.add_argument("--verbose", action="store_true", help="print every check")
    par.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd parity``: the tolerance table, the case list, or the checks (exit 1: failed)."""
    if args.tolerances:
        from parity.tolerances import tolerance_table

        print(tolerance_table())
        return EXIT_OK
    modes = tuple(comma_list(args.ms_modes))
    bad = [m for m in modes if m not in ("graph", "pynative")]
    if bad or not modes:
        raise ValueError(f"--ms-modes: expected graph and/or pynative, got {args.ms_modes!r}")
    if args.list:
        return _list_cases(args)
    from parity.core import format_report
    from parity.suite import run_parity

    out = Path(args.out) if args.out else Path("runs") / f"parity-{timestamp()}.json"
    report = run_parity(
        weights=args.weights,
        quick=args.quick,
        select=args.select,
        out=out,
        seed=args.seed,
        ms_modes=modes,
    )
    print(format_report(report, all_checks=args.verbose))
    print(f"report: {out}")
    return EXIT_OK if report["passed"] else EXIT_FAIL


def _list_cases(args: argparse.Namespace) -> int:
    """Print the selected cases (name, family, quick) without running them."""
    from parity.core import select_cases
    from parity.suite import all_cases, resolve_weights

    wmap = {k: v["path"] for k, v in resolve_weights(args.weights).items()} or None
    for case in select_cases(all_cases(wmap), quick=args.quick, patterns=args.select):
        print(f"{case.name:<48} {case.family:<14} {'quick' if case.quick else ''}")
    return EXIT_OK
