"""``irkd export`` and ``irkd release``: gated artifacts for Ascend (MindIR) and Jetson (ONNX).

Both open only behind a passing parity report for the exact weights (:mod:`irkd.gate`),
checked before any framework is imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irkd.cli.common import EXIT_OK, say

if TYPE_CHECKING:
    from irkd.release import ModelInfo, ReleaseBackend

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``release`` to the subcommands."""
    exp = sub.add_parser(
        "export", help="gated export of one network: MindIR (Ascend) and/or ONNX (Jetson)"
    )
    exp.add_argument("--weights", required=True, help="a run's best.safetensors")
    exp.add_argument("--parity", help="passing parity report for these exact weights")
    exp.add_argument("--target", choices=["ascend", "jetson", "both"], default="both")
    exp.add_argument("--out", required=True, help="output folder (must not exist)")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=run)

    rel = sub.add_parser(
        "release",
        help="gated release: MindIR (Ascend) and ONNX/TensorRT (Jetson) for teacher and student",
    )
    rel.add_argument("--teacher", required=True, help="teacher weights (a run's best.safetensors)")
    rel.add_argument("--student", required=True, help="student weights")
    rel.add_argument("--out", required=True, help="release folder (must not exist)")
    rel.add_argument("--parity", help="passing parity report for these exact weights")
    rel.add_argument("--data", help="dataset for the student's metrics (default: its run's)")
    rel.add_argument("--split", default="test")
    rel.add_argument("--no-eval", action="store_true", help="skip the student's metrics")
    rel.add_argument("--overwrite", action="store_true", help="replace an existing release")
    rel.add_argument(
        "--no-recheck",
        action="store_true",
        help="do not re-run the network parity cases on the weights (by default the release "
        "checks them itself, so that no report file alone opens the gate; the manifest records "
        "the skip)",
    )
    rel.add_argument("--warmup", type=int, default=10)
    rel.add_argument("--runs", type=int, default=50)
    rel.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd export`` or ``irkd release`` (``args.command``); returns the exit status."""
    return _export(args) if args.command == "export" else _release(args)


def _release_backends(
    targets: Sequence[str], warmup: int = 10, runs: int = 50
) -> list[ReleaseBackend]:
    """The ReleaseBackend of each target (imports the deploy packages)."""
    from irkd.bench import release_latency
    from irkd.release import ReleaseBackend

    out = []
    if "ascend" in targets:
        from deploy_ascend import release as asc

        out.append(
            ReleaseBackend(
                "ascend",
                asc.export_for_release,
                lambda i, d: release_latency(asc.latency_runtimes(warmup=warmup, runs=runs), i, d),
                asc.versions,
            )
        )
    if "jetson" in targets:
        from deploy_jetson import release as jet

        out.append(
            ReleaseBackend(
                "jetson",
                jet.export_for_release,
                lambda i, d: release_latency(jet.latency_runtimes(warmup=warmup, runs=runs), i, d),
                jet.versions,
            )
        )
    return out


def _export(args: argparse.Namespace) -> int:
    """Export one network behind the parity gate and list the files written."""
    from irkd.gate import check_gate
    from irkd.release import export_model

    if not args.parity:
        raise ValueError(
            "irkd export needs --parity REPORT: a passing `irkd parity --weights FILE --out "
            "REPORT` for these exact weights (no artifact from weights whose parity failed)"
        )
    check_gate(args.parity, [args.weights])  # before importing any framework
    targets = ["ascend", "jetson"] if args.target == "both" else [args.target]
    summary = export_model(
        args.weights,
        args.out,
        report=args.parity,
        backends=_release_backends(targets),
        overwrite=args.overwrite,
        say=say,
    )
    for f in summary["files"]:
        print(f"{f['path']:<50} {f['bytes']:>10}  {f['sha256'][:16]}")
    print(f"export: {args.out} (export.json)")
    return EXIT_OK


def _recheck_networks(weights: Sequence[Path]) -> dict[str, Any]:
    """Re-run the network parity cases on the weights (``parity.suite``)."""
    from parity.suite import recheck_networks

    return recheck_networks(weights)


def _release(args: argparse.Namespace) -> int:
    """Build the release of teacher and student behind the parity gate."""
    from irkd.release import build_release

    if not args.parity:
        raise ValueError(
            "irkd release needs --parity REPORT: a passing `irkd parity --weights TEACHER "
            "--weights STUDENT --out REPORT` for these exact weights (the release gate)"
        )
    from irkd.gate import check_gate

    check_gate(args.parity, [args.teacher, args.student])  # before importing any framework
    from deploy_jetson import release as jet

    backends = _release_backends(["ascend", "jetson"], args.warmup, args.runs)

    def evaluate(info: ModelInfo, root: Path) -> dict[str, Any]:
        data = args.data or info.data_root
        if not data or not Path(data).is_dir():
            raise ValueError(
                f"the student's dataset {data!r} is not a folder here: pass --data ROOT"
            )
        onnx = root / "jetson" / "student" / f"{info.network}_dynamic.onnx"
        return jet.evaluate_onnx(
            onnx, data, mean=info.mean, std=info.std, split=args.split, multiple=info.multiple
        )

    manifest = build_release(
        args.teacher,
        args.student,
        args.out,
        report=args.parity,
        backends=backends,
        evaluate=None if args.no_eval else evaluate,
        overwrite=args.overwrite,
        recheck=None if args.no_recheck else _recheck_networks,
        say=say,
    )
    _print_release(manifest, args.out)
    return EXIT_OK


def _print_release(manifest: dict[str, Any], out: str) -> None:
    """The student's metrics and the teacher/student latencies of a built release."""
    m = manifest["metrics"]["student"]
    if m:
        print(
            f"student {manifest['models']['student']['network']} on {m['split']} "
            f"({m['runtime']}, {m['artifact']}): IoU {100 * m['iou']:.2f}% | "
            f"nIoU {100 * m['niou']:.2f}% | Pd {100 * m['pd']:.2f}% | Fa {m['fa_1e6']:.2f}e-6"
        )
    for runtime, ratio in manifest["speedup_teacher_over_student"].items():
        lat = manifest["latency"][runtime]
        print(
            f"{runtime:<20} teacher {lat['teacher']['median_ms']:8.2f} ms  student "
            f"{lat['student']['median_ms']:8.2f} ms  speedup {ratio:.2f}x"
        )
    print(f"release: {out} ({len(manifest['files'])} files, manifest.json)")
