"""``irkd bench steps`` and ``irkd bench latency``: speed measurements.

``irkd bench pareto`` (latency against accuracy of a study's models) is
:mod:`irkd.cli.pareto`; this module adds its parser to the ``bench`` group.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from irkd.cli import pareto
from irkd.cli.common import EXIT_OK, comma_list, say

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its parts ``steps``, ``latency`` and ``pareto`` to the subcommands."""
    bench = sub.add_parser("bench", help="speed measurements (training steps; latency)")
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bsub.required = True
    steps = bsub.add_parser(
        "steps", help="training step times: teacher, student, distillation, per backend"
    )
    steps.add_argument("--backend", choices=["pytorch", "mindspore", "both"], default="both")
    steps.add_argument("--teacher", default="dnanet")
    steps.add_argument("--student", default="dnanet_xs")
    steps.add_argument("--method", default="msa_awmse")
    steps.add_argument("--stages", default="enc1", help="comma-separated stages (default enc1)")
    steps.add_argument("--optim", default="adamw", choices=["adamw", "adam", "sgd"])
    steps.add_argument("--batch", type=int, default=4)
    steps.add_argument("--size", type=int, default=256, help="square crop side (default 256)")
    steps.add_argument("--steps", type=int, default=6, help="steps per run (first reported apart)")
    steps.add_argument("--pynative", action="store_true", help="MindSpore PyNative, not GRAPH")
    steps.add_argument("--out", help="JSON file for the rows")
    steps.add_argument("--only", type=int, choices=[0, 1, 2], help=argparse.SUPPRESS)
    steps.add_argument(
        "--run", type=int, choices=[0, 1, 2], help="one run only: 0 teacher, 1 student, 2 distill"
    )
    steps.add_argument(
        "--contention",
        action="store_true",
        help="time each run twice: alone, then next to one busy process (a spinning loop)",
    )
    steps.add_argument(
        "--omp-wait-policy",
        choices=["PASSIVE", "ACTIVE"],
        help="OMP_WAIT_POLICY of the timed processes (default: irkd's, PASSIVE)",
    )
    steps.set_defaults(func=run)
    lat = bsub.add_parser(
        "latency",
        help="teacher and student latency (batch 1, 1x1x256x256) on every runtime present",
    )
    lat.add_argument("--teacher", default="dnanet")
    lat.add_argument(
        "--students", default="dnanet_xs,dnanet_s,dnanet_xxs", help="comma-separated networks"
    )
    lat.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NET=FILE",
        help="trained weights of a network (default: seeded random: speed does not depend on them)",
    )
    lat.add_argument("--backend", choices=["jetson", "ascend", "both"], default="both")
    lat.add_argument("--warmup", type=int, default=10)
    lat.add_argument("--runs", type=int, default=50)
    lat.add_argument("--out", help="JSON file")
    lat.set_defaults(func=run)
    pareto.add_parser(bsub)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd bench steps`` or ``irkd bench latency``; returns the exit status."""
    return _steps(args) if args.bench_command == "steps" else _latency(args)


def _steps(args: argparse.Namespace) -> int:
    """Time the training steps; print the table (or, with ``--only``, write the rows)."""
    from irkd.bench import format_steps

    backends = ["pytorch", "mindspore"] if args.backend == "both" else [args.backend]
    if args.only is not None and args.backend == "both":
        raise ValueError("--only needs --backend pytorch or --backend mindspore")
    rows = _steps_in_processes(args, backends) if args.only is None else _steps_here(args)
    if args.only is None:
        print(format_steps(rows))
        if args.contention:
            from irkd.bench import format_contention

            print("\none busy process next to the step (--contention):")
            print(format_contention(rows))
    if args.out:
        from irkd.files import write_json_atomic

        write_json_atomic(Path(args.out), {"kind": "irkd-bench-steps", "rows": rows})
        if args.only is None:
            print(f"written: {args.out}")
    return EXIT_OK


def _steps_in_processes(args: argparse.Namespace, backends: list[str]) -> list[dict[str, Any]]:
    """Every (backend, run, condition) timed in a process of its own.

    Memory MindSpore keeps (compiled graphs, pools) would otherwise add up over the runs,
    and no run slows the next.
    """
    import json
    import tempfile

    rows = []
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    conditions = ["quiet", "busy"] if args.contention else ["quiet"]
    runs = range(3) if args.run is None else [args.run]
    with tempfile.TemporaryDirectory(prefix="irkd-steps-") as tmp:
        for b in backends:
            for i in runs:
                for cond in conditions:
                    out = Path(tmp) / f"{b}-{i}-{cond}.json"
                    _time_in_process(_bench_argv(args, b, i, out), env, busy=cond == "busy")
                    for r in json.loads(out.read_text())["rows"]:
                        rows.append({**r, "condition": cond})
    return rows


def _time_in_process(argv: list[str], env: dict[str, str], *, busy: bool) -> None:
    """Run ``irkd ARGV`` in a child process; ``busy``: next to one spinning interpreter."""
    import subprocess

    cmd = [sys.executable, "-m", "irkd.cli", *argv]
    # --contention: one busy process of our own next to the step (a
    # spinning interpreter), so that the figure is reproducible
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        subprocess.run(cmd, check=True, env=env)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()


def _steps_here(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One run (``--only``) of one backend, timed in this process."""
    from irkd.bench import bench_steps

    if args.backend == "pytorch":
        from torch_ref import bench as tb

        timer, writer = tb.step_times, tb.write_random_weights
    else:
        from ms_impl import bench as mb

        timer, writer = mb.step_times, mb.write_random_weights
    return bench_steps(
        {args.backend: timer},
        {args.backend: writer},
        teacher=args.teacher,
        student=args.student,
        batch=args.batch,
        size=args.size,
        steps=args.steps,
        only=args.only,
        method=args.method,
        stages=comma_list(args.stages),
        optim=args.optim,
        graph_mode=not args.pynative,
    )


def _bench_argv(args: argparse.Namespace, backend: str, only: int, out: Path) -> list[str]:
    """The arguments of the child process that times run ``only`` of ``backend``."""
    argv = ["bench", "steps", "--backend", backend, "--only", str(only), "--out", str(out)]
    for opt in ("teacher", "student", "method", "stages", "optim", "batch", "size", "steps"):
        argv += [f"--{opt}", str(getattr(args, opt))]
    return argv + (["--pynative"] if args.pynative else [])


def _latency(args: argparse.Namespace) -> int:
    """Time the teacher and the students on every runtime present."""
    import tempfile

    from irkd.bench import bench_latency, format_latency

    runtimes = {}
    if args.backend in ("jetson", "both"):
        from deploy_jetson import release as jet

        runtimes.update(jet.latency_runtimes(warmup=args.warmup, runs=args.runs))
    if args.backend in ("ascend", "both"):
        from deploy_ascend import release as asc

        runtimes.update(asc.latency_runtimes(warmup=args.warmup, runs=args.runs))
    weights = dict(w.split("=", 1) for w in args.weights)
    with tempfile.TemporaryDirectory(prefix="irkd-latency-") as tmp:
        result = bench_latency(
            runtimes,
            teacher=args.teacher,
            students=comma_list(args.students),
            weights=weights,
            workdir=Path(tmp),
            say=say,
        )
    print(format_latency(result))
    if args.out:
        from irkd.files import write_json_atomic

        write_json_atomic(Path(args.out), result)
        print(f"written: {args.out}")
    return EXIT_OK
