"""The ``irkd`` command line.

One module per command group, each with ``add_parser(subparsers)`` and ``run(args)``:
:mod:`~irkd.cli.data` (``data check``, ``data synth``), :mod:`~irkd.cli.score`,
:mod:`~irkd.cli.models`, :mod:`~irkd.cli.demo`, :mod:`~irkd.cli.weights`
(``weights convert``), :mod:`~irkd.cli.train` (``train``, ``distill``),
:mod:`~irkd.cli.study`, :mod:`~irkd.cli.evaluate` (``eval``), :mod:`~irkd.cli.parity`,
:mod:`~irkd.cli.bench` (``bench steps``, ``bench latency``; ``bench pareto`` is
:mod:`~irkd.cli.pareto`) and :mod:`~irkd.cli.release` (``export``, ``release``). What they
share (exit codes, error lines, config loading) is :mod:`~irkd.cli.common`.

Every subcommand builds its own arguments (no global argparse state) and imports a
framework only inside its handler, so ``irkd data check`` never loads MindSpore or PyTorch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from irkd.cli import (
    bench,
    data,
    demo,
    evaluate,
    models,
    parity,
    release,
    score,
    study,
    train,
    weights,
)
from irkd.cli.common import call_handler

__all__ = ["main", "build_parser"]

# In the order `irkd --help` lists them.
_GROUPS = (data, score, models, demo, weights, train, study, evaluate, parity, bench, release)


def build_parser() -> argparse.ArgumentParser:
    """Build a fresh parser (callers may build as many as they like)."""
    parser = argparse.ArgumentParser(
        prog="irkd",
        description="Knowledge distillation for infrared small target detection "
        "(MindSpore native, PyTorch mirror).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in _GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``irkd`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option, so
    # `irkd train cfg.yaml --out DIR key=value` leaves key=value over: keep such overrides.
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return call_handler(args.func, args)
