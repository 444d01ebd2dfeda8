"""``irkd demo``: teacher, student alone and MSA-AWMSE student on synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irkd.cli.common import EXIT_OK, timestamp
from irkd.cli.train import backend_run

if TYPE_CHECKING:
    from irkd.config import ExperimentConfig

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the subcommands."""
    demo = sub.add_parser(
        "demo",
        help="the main job: teacher, student alone and MSA-AWMSE student on synthetic data",
    )
    demo.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    demo.add_argument("--config", help="demo config (default configs/demo.yaml)")
    demo.add_argument("--backend", choices=["pytorch", "mindspore"], help="override the backend")
    demo.add_argument("--out", help="output folder (default runs/demo-<time>)")
    demo.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd demo``: its three runs and their summary; returns the exit status."""
    from irkd.demo import run_demo

    overrides = list(args.overrides)
    if args.backend:
        overrides.insert(0, f"backend={args.backend}")
    out = Path(args.out) if args.out else Path("runs") / f"demo-{timestamp()}"

    def runner(cfg: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
        return backend_run(cfg.backend)(cfg, run_dir, cache_dir=args.cache)

    run_demo(runner, out, config=args.config, overrides=overrides)
    print(f"\nsummary: {out / 'summary.json'}")
    return EXIT_OK
