"""``irkd bench pareto``: latency (batch 1) against test IoU of a study's models.

Each backend's part (Jetson: onnxruntime sweep, INT8; Ascend: BatchNorm folding) is measured
in a process of its own (``--part``, hidden), whose JSON is kept under OUT/parts/ so that
``--reuse-parts`` re-reports without re-measuring; the parent merges the parts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irkd.cli.common import EXIT_OK, say

if TYPE_CHECKING:
    from irkd.pareto import StudyModel

__all__ = ["add_parser", "run"]


def add_parser(bsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pareto`` to the actions of ``irkd bench``."""
    par_ = bsub.add_parser(
        "pareto",
        help="latency (batch 1) against test IoU of a study's teacher and students, "
        "with BatchNorm folding and INT8",
    )
    par_.add_argument("--results", default="results/cpu", help="study results folder")
    par_.add_argument("--dataset", default="nudt", help="dataset key of the study")
    par_.add_argument(
        "--runs-dir", default="runs/study/cpu", help="the study's run folders (weights)"
    )
    par_.add_argument("--data", help="dataset folder (default: the one in the weights)")
    par_.add_argument(
        "--eval-rows", default="msa_awmse", help="rows whose INT8/BN-folded IoU is measured"
    )
    par_.add_argument("--backends", default="jetson,ascend", help="parts to run (subprocesses)")
    par_.add_argument("--rounds", type=int, default=20, help="timed rounds (interleaved)")
    par_.add_argument("--warmup", type=int, default=3)
    par_.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    par_.add_argument("--no-int8", action="store_true", help="skip INT8 quantization")
    par_.add_argument("--no-eval", action="store_true", help="skip the variants' test IoU")
    par_.add_argument("--no-sweep", action="store_true", help="skip the onnxruntime sweep")
    par_.add_argument(
        "--calibration", default="minmax", choices=["minmax", "entropy", "percentile"]
    )
    par_.add_argument("--int8-ops", default="Conv", help="operator types quantized to INT8")
    par_.add_argument("--out", default="runs/bench/pareto", help="folder for the outputs")
    par_.add_argument(
        "--reuse-parts", action="store_true", help="reuse OUT/parts/*.json measured before"
    )
    par_.add_argument("--part", choices=["jetson", "ascend"], help=argparse.SUPPRESS)
    par_.add_argument("--spec", help=argparse.SUPPRESS)
    par_.add_argument("--part-out", help=argparse.SUPPRESS)
    par_.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``irkd bench pareto`` (or one backend's part of it); returns the exit status."""
    if args.part:
        return _part(args)
    from irkd import pareto
    from irkd.files import write_json_atomic, write_text_atomic

    models = pareto.study_models(args.results, args.dataset, args.runs_dir)
    nets: dict[str, str | None] = {}
    for m in models:
        nets.setdefault(m.network, m.weights)
    parts = _measure_parts(args, _specs(args, models, nets))
    result = _result(args, models, nets, parts)
    text = pareto.format_pareto(result)
    print(text)
    out_dir = Path(args.out)
    write_json_atomic(out_dir / "pareto.json", result)
    write_text_atomic(out_dir / "pareto.md", text + "\n")
    pareto.plot_pareto(result, out_dir / "pareto.png")
    print(f"written: {out_dir}/pareto.json, pareto.md, pareto.png")
    return EXIT_OK


def _part(args: argparse.Namespace) -> int:
    """Measure one backend's part from its spec file (in the child process)."""
    import json
    import tempfile

    from irkd.files import write_json_atomic

    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    if args.part == "jetson":
        from deploy_jetson.optimize import pareto_part
    else:
        from deploy_ascend.fold import pareto_part
    with tempfile.TemporaryDirectory(prefix="irkd-pareto-") as tmp:
        write_json_atomic(Path(args.part_out), pareto_part(spec, Path(tmp), say))
    return EXIT_OK


def _specs(
    args: argparse.Namespace, models: list[StudyModel], nets: dict[str, str | None]
) -> dict[str, dict[str, Any]]:
    """What each backend's part measures: networks, INT8 and BN-folded variants, rounds."""
    from irkd.release import model_info

    measured = [m for m in models if m.label in args.eval_rows.split(",") and m.weights]

    def item(m: StudyModel, evaluate: bool) -> dict[str, Any]:
        assert m.weights is not None  # the measured rows and the teacher (when it has weights)
        info = model_info(m.label, m.weights)
        return {
            "label": m.label,
            "network": m.network,
            "weights": m.weights,
            "data": args.data or info.data_root,
            "mean": info.mean,
            "std": info.std,
            "multiple": info.multiple,
            "eval": evaluate,
        }

    int8 = [item(m, not args.no_eval) for m in measured]
    if not args.no_int8 and models[0].weights:
        int8.insert(0, item(models[0], False))  # the teacher's INT8 latency, not its IoU
    common = {"networks": nets, "rounds": args.rounds, "warmup": args.warmup}
    return {
        "jetson": {
            **common,
            "threads": args.threads,
            "sweep": not args.no_sweep,
            "int8": [] if args.no_int8 else int8,
            "calibration": {"method": args.calibration, "op_types": args.int8_ops.split(",")},
        },
        "ascend": {
            **common,
            "fold_eval": [] if args.no_eval else [item(m, True) for m in measured],
        },
    }


def _measure_parts(
    args: argparse.Namespace, specs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each backend's part, measured in a process of its own (or reused with --reuse-parts).

    A process of its own: MindSpore's ONEDNN_MAX_CPU_ISA slows PyTorch.
    """
    import json
    import subprocess

    from irkd.files import write_json_atomic

    parts = {}
    out_dir = Path(args.out)
    for backend in args.backends.split(","):
        spec_path = out_dir / "parts" / f"{backend}-spec.json"
        out = out_dir / "parts" / f"{backend}.json"
        if not (args.reuse_parts and out.is_file()):
            write_json_atomic(spec_path, specs[backend])
            cmd = [sys.executable, "-m", "irkd.cli", "bench", "pareto", "--part", backend,
                   "--spec", str(spec_path), "--part-out", str(out)]  # fmt: skip
            subprocess.run(cmd, check=True)
        parts[backend] = json.loads(out.read_text(encoding="utf-8"))
    return parts


def _result(
    args: argparse.Namespace,
    models: list[StudyModel],
    nets: dict[str, str | None],
    parts: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The merged parts: rows, verdicts, latency, accuracy and the onnxruntime sweep."""
    from irkd import pareto

    latency = {rt: v for p in parts.values() for rt, v in p["latency"].items()}
    accuracy = {rt: v for p in parts.values() for rt, v in p["accuracy"].items()}
    sweep_keys = [rt for rt in latency if "[" in rt]
    main_latency = {rt: v for rt, v in latency.items() if "[" not in rt}
    rows = pareto.pareto_rows(models, main_latency, accuracy)
    result = {
        "kind": "irkd-bench-pareto",
        "dataset": args.dataset,
        "results": str(args.results),
        "models": pareto.model_dicts(models),
        "rows": rows,
        "verdict": pareto.verdicts(rows),
        "accuracy": accuracy,
        "latency": latency,
        "load": {b: [p["load_before"], p["load_after"]] for b, p in parts.items()},
        "checks": {b: p["checks"] for b, p in parts.items()},
        "rounds": args.rounds,
        "shape": [1, 1, 256, 256],
        "nproc": os.cpu_count(),
    }
    if sweep_keys:
        result["sweep"] = {
            "columns": [k[len("onnxruntime-cpu") :] for k in sweep_keys],
            "rows": {n: [latency[k][n]["median_ms"] for k in sweep_keys] for n in nets},
        }
    return result
