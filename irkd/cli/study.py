"""``irkd study``: a resumable grid of runs, aggregated into committed tables and plots."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from irkd.cli.common import EXIT_OK, EXIT_USAGE

__all__ = ["add_parser", "run"]

_STUDY_HELP = """\
Run a grid of training runs (datasets x rows x seeds, one teacher per dataset, optional
tuning grids) and aggregate them into committed tables and plots. The study file format is
in docs/study.md.

Every run is `python -m irkd.cli train|distill CONFIG --out RUN` in its own process
(IRKD_TORCH_THREADS/OMP_NUM_THREADS = the study's threads, OMP_WAIT_POLICY=PASSIVE). The
whole study is validated before anything starts (exit 2 on a bad study file).

Resumable: run the same command again after a crash or a kill. Finished runs are skipped,
interrupted runs continue from their last checkpoint, runs that died before their first
checkpoint restart. Weights and checkpoints go to RUNS_DIR/<name>/<run id>/ (git-ignored);
after every finished run, RESULTS_DIR/<name>/ gets runs/<run id>/ (config, metrics, log
summary, run facts; no weights), table.json/md, tuning.json/md and PNG plots.

Exit status: 0 all selected runs done, 1 some failed (the others still ran), 2 invalid
study file, 130 interrupted.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``study`` to the subcommands."""
    st = sub.add_parser(
        "study",
        help="run a resumable grid of runs (teacher, rows, seeds, tuning) and report it",
        description=_STUDY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("study", help="study YAML (docs/study.md)")
    st.add_argument("--workers", type=int, default=1, help="runs side by side (default 1)")
    st.add_argument(
        "--nproc-per-run",
        type=int,
        default=1,
        help="processes of each run, data-parallel through torchrun / msrun (default 1)",
    )
    st.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only the run ids matching this fnmatch pattern (repeatable), e.g. 'nudt-*-s0-*'",
    )
    st.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (id, done / partial epoch k / pending / waiting) and exit",
    )
    st.add_argument(
        "--report", action="store_true", help="only aggregate finished runs into RESULTS_DIR"
    )
    st.add_argument(
        "--no-share",
        action="store_true",
        help="train every run here, even one a study beside it in RUNS_DIR has finished with "
        "the same config (default: link that run folder instead)",
    )
    st.add_argument("--runs-dir", default="runs/study", help="run folders (default runs/study)")
    st.add_argument("--results-dir", default="results", help="committed results (default results)")
    st.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd study``: the runs, a dry run or the report; exit 2 on a bad study file."""
    from irkd.study.runner import Options, StudyRunner
    from irkd.study.spec import StudyError, load_study

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.nproc_per_run < 1:
        raise ValueError(f"--nproc-per-run must be >= 1, got {args.nproc_per_run}")
    try:
        study = load_study(args.study)
        runner = StudyRunner(
            study,
            Options(
                workers=args.workers,
                nproc_per_run=args.nproc_per_run,
                only=list(args.only or []),
                runs_dir=Path(args.runs_dir),
                results_dir=Path(args.results_dir),
                cache=Path(args.cache),
                share=not args.no_share,
                say=lambda line: print(line, flush=True),
            ),
        )
        if args.dry_run:
            for line in runner.describe():
                print(line)
            return EXIT_OK
        if args.report:
            table = runner.write_report()
            print(f"report: {table} (table.md, plots) in {table.parent}")
            return EXIT_OK
        return runner.run()
    except StudyError as exc:
        print(f"irkd study: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
