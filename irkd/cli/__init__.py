"""The ``irkd`` command line.

Every subcommand builds its own arguments (no global argparse state) and imports a
framework only inside its handler, so ``irkd data check`` never loads MindSpore or PyTorch.
A subcommand that is not built yet says so and exits 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def _cmd_data_check(args: argparse.Namespace) -> int:
    from irkd.data import check_dataset, format_report

    report = check_dataset(args.root, layout=args.layout)
    print(format_report(report))
    if args.json:
        from irkd.files import write_json_atomic

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


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    """Parse ``B,C,H,W`` (H and W multiples of 16) for ``irkd models --shape``."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--shape must be B,C,H,W integers, got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--shape must be four positive integers B,C,H,W, got {text!r}")
    if shape[2] % 16 or shape[3] % 16:
        raise ValueError(f"--shape: H and W must be multiples of 16, got {shape[2]}x{shape[3]}")
    return shape[0], shape[1], shape[2], shape[3]


_MACS_NOTE = (
    "MACs: multiply-accumulates of Conv2d/Linear layers only (out_elements * in_ch/groups * kh"
    " * kw), no bias, BatchNorm, activation, pooling or resize ops, counted on the PyTorch twin."
    "\nthop (G): the convention of thop, which BasicIRSTD's published figures use: convolutions"
    " plus BatchNorm (4/element), bilinear resizes (11/output element) and global average"
    " pooling (BasicIRSTD publishes 14.26 G for DNANet at 1x1x256x256)."
)


def _cmd_models(args: argparse.Namespace) -> int:
    from irkd.zoo import MODELS, stage_channels

    shape = _parse_shape(args.shape)
    import torch_ref.models as tmodels
    from torch_ref.profile import count_macs, count_ops_thop_convention
    from torch_ref.profile import count_params as torch_params

    try:
        import ms_impl.models as mmodels  # ms_impl first sets the oneDNN ISA for MindSpore
        from ms_impl.profile import count_params as ms_params
    except ImportError as exc:  # a PyTorch-only install (e.g. a Jetson) still gets the table
        print(f"note: MindSpore side unavailable ({exc}); parameters not cross-checked")
        mmodels = None

    extra = {} if shape[1] == 1 else {"in_channels": shape[1]}
    rows = []
    for name, spec in MODELS.items():
        tnet = tmodels.create_model(name, **extra)
        n_torch = torch_params(tnet)
        n_ms = ms_params(mmodels.create_model(name, **extra)) if mmodels is not None else None
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "role": spec.role,
                "params": n_torch,
                "params_mindspore": n_ms,
                "macs": count_macs(tnet, shape),
                "ops_thop": count_ops_thop_convention(tnet, shape)["total"],
                "stage_channels": stage_channels(name),
                "summary": spec.summary,
                "kwargs": spec.kwargs,
            }
        )
    teacher_macs = {r["family"]: r["macs"] for r in rows if r["role"] == "teacher"}

    header = (
        "name",
        "family",
        "role",
        "params (M)",
        "MACs (G)",
        "thop (G)",
        "vs teacher",
        "stages",
        "summary",
    )
    table = []
    warnings = {}
    for r in rows:
        ref = teacher_macs.get(r["family"])
        r["macs_vs_teacher"] = r["macs"] / ref if ref else None
        widths = [r["stage_channels"][f"enc{i}"] for i in range(5)]
        table.append(
            (
                r["name"],
                r["family"],
                r["role"],
                f"{r['params'] / 1e6:.2f}",
                f"{r['macs'] / 1e9:.2f}",
                f"{r['ops_thop'] / 1e9:.2f}",
                f"{100 * r['macs_vs_teacher']:.1f}%" if ref else "-",
                "-".join(str(w) for w in widths),
                r["summary"],
            )
        )
        if r["params_mindspore"] is not None and r["params_mindspore"] != r["params"]:
            warnings[r["name"]] = (
                f"  WARNING {r['name']}: PyTorch has {r['params']:,} parameters, "
                f"MindSpore {r['params_mindspore']:,}"
            )
    cols = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=True)]
    right = {3, 4, 5, 6}

    def fmt(cells: Sequence[str]) -> str:
        out = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, cols, strict=True))
        ]
        return "  ".join(out).rstrip()

    print(f"registered networks, input {'x'.join(str(s) for s in shape)}")
    print(fmt(header))
    print(fmt(["-" * w for w in cols]))
    for r, cells in zip(rows, table, strict=True):
        print(fmt(cells))
        if r["name"] in warnings:
            print(warnings[r["name"]])
    print(_MACS_NOTE)
    if mmodels is not None and not warnings:
        print("parameter counts agree between the MindSpore and PyTorch twins")
    if args.json:
        from irkd.files import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "shape": list(shape),
                "macs_counted": "Conv2d, ConvTranspose2d, Linear (PyTorch twin)",
                "params_agree": (not warnings) if mmodels is not None else None,
                "models": rows,
            },
        )
    return EXIT_FAIL if warnings else EXIT_OK


def _cmd_weights_convert(args: argparse.Namespace) -> int:
    import os

    from irkd.zoo import check_network

    check_network(args.network, key="--network")
    if os.path.lexists(args.dst) and not args.overwrite:
        raise FileExistsError(f"{args.dst} exists: pass --overwrite to replace it")
    from parity.weights import convert

    kwargs = {"deep_supervision": True} if args.deep_supervision else None
    rep = convert(args.src, args.dst, network=args.network, model_kwargs=kwargs)
    print(f"wrote {rep.dst}: {rep.tensors} tensors, sha256 {rep.sha256}")
    if rep.dropped:
        shown = ", ".join(rep.dropped[:5]) + (" ..." if len(rep.dropped) > 5 else "")
        print(f"dropped {len(rep.dropped)} non-network entries: {shown}")
    return EXIT_OK


# ----------------------------------------------------------------------------- train / distill


def _split_config_args(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """CONFIG is optional with --resume --out DIR; an item with '=' is an override."""
    items = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).is_file():
        items.insert(0, config)
        config = None
    if config is None:
        if not (args.resume and args.out):
            raise ValueError("a CONFIG file is needed (or --resume --out RUN_DIR)")
        config = str(Path(args.out) / "config.yaml")
    return Path(config), items


def _backend_run(backend: str) -> Callable[..., dict]:
    """The training entry point ``run(cfg, run_dir, *, resume, cache_dir)`` of a backend."""
    if backend == "pytorch":
        from torch_ref.train import run
    else:
        try:
            from ms_impl.train import run
        except ImportError as exc:
            raise ValueError(f"backend mindspore is not available here: {exc}") from None
    return run


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from irkd.demo import run_demo

    overrides = list(args.overrides)
    if args.backend:
        overrides.insert(0, f"backend={args.backend}")
    out = Path(args.out) if args.out else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"

    def runner(cfg, run_dir: Path) -> dict:
        return _backend_run(cfg.backend)(cfg, run_dir, cache_dir=args.cache)

    run_demo(runner, out, config=args.config, overrides=overrides)
    print(f"\nsummary: {out / 'summary.json'}")
    return EXIT_OK


def _cmd_bench_steps(args: argparse.Namespace) -> int:
    import json
    import subprocess
    import tempfile

    from irkd.bench import bench_steps, format_steps

    backends = ["pytorch", "mindspore"] if args.backend == "both" else [args.backend]
    if args.only is not None and args.backend == "both":
        raise ValueError("--only needs --backend pytorch or --backend mindspore")
    if args.only is None:
        # One process per (backend, run): memory MindSpore keeps (compiled graphs, pools)
        # would otherwise add up over the runs, and no run slows the next.
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
                        cmd = [sys.executable, "-m", "irkd.cli", *_bench_argv(args, b, i, out)]
                        # --contention: one busy process of our own next to the step (a
                        # spinning interpreter), so that the figure is reproducible
                        spin = (
                            subprocess.Popen([sys.executable, "-c", "while True: pass"])
                            if cond == "busy"
                            else None
                        )
                        try:
                            subprocess.run(cmd, check=True, env=env)
                        finally:
                            if spin is not None:
                                spin.kill()
                                spin.wait()
                        for r in json.loads(out.read_text())["rows"]:
                            rows.append({**r, "condition": cond})
    else:
        if args.backend == "pytorch":
            from torch_ref import bench as tb

            timer, writer = tb.step_times, tb.write_random_weights
        else:
            from ms_impl import bench as mb

            timer, writer = mb.step_times, mb.write_random_weights
        rows = bench_steps(
            {args.backend: timer},
            {args.backend: writer},
            teacher=args.teacher,
            student=args.student,
            batch=args.batch,
            size=args.size,
            steps=args.steps,
            only=args.only,
            method=args.method,
            stages=[s.strip() for s in args.stages.split(",") if s.strip()],
            optim=args.optim,
            graph_mode=not args.pynative,
        )
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


def _bench_argv(args: argparse.Namespace, backend: str, only: int, out: Path) -> list[str]:
    argv = ["bench", "steps", "--backend", backend, "--only", str(only), "--out", str(out)]
    for opt in ("teacher", "student", "method", "stages", "optim", "batch", "size", "steps"):
        argv += [f"--{opt}", str(getattr(args, opt))]
    return argv + (["--pynative"] if args.pynative else [])


def _release_backends(targets: Sequence[str], warmup: int = 10, runs: int = 50) -> list:
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


def _cmd_export(args: argparse.Namespace) -> int:
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
        say=lambda s: print(s, file=sys.stderr, flush=True),
    )
    for f in summary["files"]:
        print(f"{f['path']:<50} {f['bytes']:>10}  {f['sha256'][:16]}")
    print(f"export: {args.out} (export.json)")
    return EXIT_OK


def _recheck_networks(weights: Sequence[Path]) -> dict:
    from parity.suite import recheck_networks

    return recheck_networks(weights)


def _cmd_release(args: argparse.Namespace) -> int:
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

    def evaluate(info, root: Path) -> dict:
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
        say=lambda s: print(s, file=sys.stderr, flush=True),
    )
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
    print(f"release: {args.out} ({len(manifest['files'])} files, manifest.json)")
    return EXIT_OK


def _cmd_bench_latency(args: argparse.Namespace) -> int:
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
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="irkd-latency-") as tmp:
        result = bench_latency(
            runtimes,
            teacher=args.teacher,
            students=students,
            weights=weights,
            workdir=Path(tmp),
            say=lambda s: print(s, file=sys.stderr, flush=True),
        )
    print(format_latency(result))
    if args.out:
        from irkd.files import write_json_atomic

        write_json_atomic(Path(args.out), result)
        print(f"written: {args.out}")
    return EXIT_OK


def _cmd_bench_pareto(args: argparse.Namespace) -> int:
    import json
    import subprocess
    import tempfile

    from irkd.files import write_json_atomic

    if args.part:
        spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        if args.part == "jetson":
            from deploy_jetson.optimize import pareto_part
        else:
            from deploy_ascend.fold import pareto_part
        with tempfile.TemporaryDirectory(prefix="irkd-pareto-") as tmp:
            write_json_atomic(Path(args.part_out), pareto_part(spec, Path(tmp), say))
        return EXIT_OK

    from irkd import pareto
    from irkd.release import model_info

    models = pareto.study_models(args.results, args.dataset, args.runs_dir)
    nets: dict[str, str | None] = {}
    for m in models:
        nets.setdefault(m.network, m.weights)
    measured = [m for m in models if m.label in args.eval_rows.split(",") and m.weights]

    def item(m: pareto.StudyModel, evaluate: bool) -> dict:
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
    specs = {
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
    parts = {}
    out_dir = Path(args.out)
    for backend in args.backends.split(","):
        # each part in a process of its own (MindSpore's ONEDNN_MAX_CPU_ISA slows PyTorch),
        # kept under OUT/parts/ so that --reuse-parts re-reports without re-measuring
        spec_path = out_dir / "parts" / f"{backend}-spec.json"
        out = out_dir / "parts" / f"{backend}.json"
        if not (args.reuse_parts and out.is_file()):
            write_json_atomic(spec_path, specs[backend])
            cmd = [sys.executable, "-m", "irkd.cli", "bench", "pareto", "--part", backend,
                   "--spec", str(spec_path), "--part-out", str(out)]  # fmt: skip
            subprocess.run(cmd, check=True)
        parts[backend] = json.loads(out.read_text(encoding="utf-8"))
    latency = {rt: v for p in parts.values() for rt, v in p["latency"].items()}
    accuracy = {rt: v for p in parts.values() for rt, v in p["accuracy"].items()}
    sweep_keys = [rt for rt in latency if "[" in rt]
    main = {rt: v for rt, v in latency.items() if "[" not in rt}
    rows = pareto.pareto_rows(models, main, accuracy)
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
    text = pareto.format_pareto(result)
    print(text)
    write_json_atomic(out_dir / "pareto.json", result)
    from irkd.files import write_text_atomic

    write_text_atomic(out_dir / "pareto.md", text + "\n")
    pareto.plot_pareto(result, out_dir / "pareto.png")
    print(f"written: {out_dir}/pareto.json, pareto.md, pareto.png")
    return EXIT_OK


def _cmd_parity(args: argparse.Namespace) -> int:
    import time

    if args.tolerances:
        from parity.tolerances import tolerance_table

        print(tolerance_table())
        return EXIT_OK
    modes = tuple(m.strip() for m in args.ms_modes.split(",") if m.strip())
    bad = [m for m in modes if m not in ("graph", "pynative")]
    if bad or not modes:
        raise ValueError(f"--ms-modes: expected graph and/or pynative, got {args.ms_modes!r}")
    from parity.core import format_report
    from parity.suite import all_cases, resolve_weights, run_parity

    if args.list:
        from parity.core import select_cases

        wmap = {k: v["path"] for k, v in resolve_weights(args.weights).items()} or None
        for case in select_cases(all_cases(wmap), quick=args.quick, patterns=args.select):
            print(f"{case.name:<48} {case.family:<14} {'quick' if case.quick else ''}")
        return EXIT_OK
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"parity-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
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


def _run_training(args: argparse.Namespace, mode: str) -> int:
    import time

    from irkd.config import is_distill, load_config

    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR (the run folder to continue)")
    config, items = _split_config_args(args)
    cfg = load_config(config, items)
    distill = is_distill(cfg)
    if mode == "distill" and not distill:
        raise ValueError(
            f"{config}: irkd distill needs a teacher (teacher.name, teacher.checkpoint) and a "
            f"method other than none (method.name is {cfg.method.name!r})"
        )
    if mode == "distill" and cfg.teacher is not None and not cfg.teacher.checkpoint:
        raise ValueError(
            f"{config}: teacher.checkpoint is not set: give the teacher's trained weights, "
            "e.g. teacher.checkpoint=runs/<teacher-run>/best.safetensors"
        )
    if mode == "train" and distill:
        raise ValueError(
            f"{config}: this config distills ({cfg.method.name} from {cfg.teacher.name}): "
            "run irkd distill, or set method.name=none to train the network alone"
        )
    from irkd.dist import launcher_env

    launch = launcher_env(cfg.backend)  # torchrun / msrun: data parallel (irkd.dist)
    other = "mindspore" if cfg.backend == "pytorch" else "pytorch"
    if launch.size == 1 and launcher_env(other).size > 1:
        wrong, right = ("torchrun", "msrun") if other == "pytorch" else ("msrun", "torchrun")
        raise ValueError(
            f"backend {cfg.backend} was started by {wrong}: launch {cfg.backend} runs with "
            f"{right}, or set backend={other}"
        )
    if launch.size > 1 and not args.out:
        raise ValueError(
            f"a data-parallel run ({launch.size} processes) needs --out RUN_DIR: every "
            "process must name the same run folder"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{stamp}"
    run = _backend_run(cfg.backend)
    if launch.rank == 0:
        ranks = f" ({launch.size} processes, {launch.launcher})" if launch.size > 1 else ""
        print(f"irkd {mode}: {cfg.name} on {cfg.backend}{ranks} -> {out}")
    result = run(cfg, out, resume=args.resume, cache_dir=args.cache)
    metrics = result.get("metrics")
    if metrics:
        from irkd.reports import format_metrics

        print(f"{cfg.name}: test split: {format_metrics(metrics)}")
        print(f"run folder: {out}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    return _run_training(args, "train")


def _cmd_distill(args: argparse.Namespace) -> int:
    return _run_training(args, "distill")


# ----------------------------------------------------------------------------- study


def _cmd_study(args: argparse.Namespace) -> int:
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


# ----------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalInputs:
    """What ``irkd eval`` evaluates, resolved from ``--run`` / ``--weights`` and the file.

    Attributes:
        cfg: The run's config (``--run``), or None.
        weights: The weights file.
        network: Registry name of the network.
        backend: ``pytorch`` or ``mindspore``.
        root: Dataset root.
        meta: The weights' metadata (normalisation, padding multiple, data root).
        teacher: ``(network, weights file, kwargs)`` of the teacher for the MSA figures, or
            None.
    """

    cfg: Any
    weights: Path
    network: str
    backend: str
    root: Path
    meta: dict
    teacher: tuple[str, Path, dict] | None


def _eval_inputs(args: argparse.Namespace) -> EvalInputs:
    """Resolve weights, network, backend, data root, normalisation and teacher for eval."""
    from irkd.config import is_distill, load_config
    from irkd.weights import extra_metadata, load_neutral

    cfg = None
    if args.run:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
        cfg = load_config(run / "config.yaml")
        weights = Path(args.weights) if args.weights else run / "best.safetensors"
        network = args.network or cfg.model.name
        backend = args.backend or cfg.backend
    else:
        if not args.weights:
            raise ValueError("irkd eval needs --run DIR or --weights FILE")
        weights = Path(args.weights)
        network = args.network
        backend = args.backend or "pytorch"
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} not found")
    meta: dict = {}
    if weights.suffix == ".safetensors":
        arrays_meta = load_neutral(weights)[1]
        meta = dict(extra_metadata(arrays_meta))
        network = network or arrays_meta.get("network")
    if network is None:
        raise ValueError(f"{weights}: no network name stored in the file: pass --network NAME")
    if args.data:
        root = Path(args.data)
    elif meta.get("data_root"):
        root = Path(meta["data_root"])
    elif cfg is not None:
        from irkd.data.prepare import resolve_dataset

        root = resolve_dataset(cfg.data, args.cache)
    else:
        raise ValueError("irkd eval --weights needs --data ROOT (the dataset folder)")
    teacher = None
    if args.teacher:
        teacher = (args.teacher_network, Path(args.teacher), {})
        if args.teacher_network is None:
            raise ValueError("--teacher needs --teacher-network NAME")
    elif cfg is not None and is_distill(cfg):
        if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():
            teacher = (cfg.teacher.name, Path(cfg.teacher.checkpoint), dict(cfg.teacher.kwargs))
    return EvalInputs(cfg, weights, network, backend, root, meta, teacher)


def _cmd_eval(args: argparse.Namespace) -> int:
    import importlib
    import time

    from irkd.config import MethodConfig
    from irkd.data import IRSTDDataset, compute_mean_std, split_train_val
    from irkd.evaluate import choose_ids, evaluate_split
    from irkd.reports import format_metrics

    inp = _eval_inputs(args)
    cfg, meta, root = inp.cfg, inp.meta, inp.root
    layout = cfg.data.layout if cfg is not None else "auto"
    dataset = IRSTDDataset(root, args.split, layout=layout)
    if meta.get("mean") is not None and meta.get("std") is not None:
        mean, std = float(meta["mean"]), float(meta["std"])
    else:
        train = IRSTDDataset(root, "train", layout=layout)
        ids = train.ids
        if cfg is not None:
            ids = split_train_val(train.ids, cfg.data.val_fraction, cfg.seed)[0]
        mean, std = compute_mean_std(train, ids)
        print(
            f"normalisation not stored with the weights: mean/std {mean:.3f}/{std:.3f} "
            f"computed on {len(ids)} training images"
        )
    multiple = int(meta.get("eval_multiple") or (cfg.data.eval_multiple if cfg else 32))

    backend = inp.backend
    modname = "torch_ref.predict" if backend == "pytorch" else "ms_impl.predict"
    try:
        pred = importlib.import_module(modname)
    except ImportError as exc:
        raise ValueError(f"backend {backend} is not available here: {exc}") from None
    net = pred.load_network(inp.network, inp.weights)
    msa = None
    if inp.teacher is not None:
        t_name, t_path, t_kwargs = inp.teacher
        teacher = pred.load_network(t_name, t_path, **t_kwargs)
        method = cfg.method if cfg is not None else MethodConfig()

        def msa(x):
            return pred.teacher_msa_maps(teacher, method, x)

    if args.ids:
        sample_ids = [i.strip() for i in args.ids.split(",") if i.strip()]
    else:
        sample_ids = choose_ids(dataset.ids, args.n_samples)
    if args.out:
        out = Path(args.out)
    elif args.run:
        out = Path(args.run) / f"eval-{args.split}"
    else:
        out = Path("runs") / f"eval-{inp.weights.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = evaluate_split(
        dataset,
        pred.forward_fn(net),
        mean=mean,
        std=std,
        out_dir=out,
        multiple=multiple,
        sample_ids=sample_ids,
        msa=msa,
        context={
            "weights": str(inp.weights),
            "network": inp.network,
            "backend": backend,
            "teacher": str(inp.teacher[1]) if inp.teacher else None,
        },
        title=f"{inp.network} on {dataset.name}/{args.split}",
    )
    print(f"{inp.network} on {dataset.name}/{args.split}: {format_metrics(report)}")
    print(f"report written to {out} (metrics.json, roc.png, samples/: {len(report['samples'])})")
    return EXIT_OK


def _train_description(mode: str) -> str:
    """The ``--help`` text of ``irkd train`` / ``irkd distill``: what a user can choose."""
    from irkd.methods import BASELINE_DEFAULTS
    from irkd.zoo import MODELS, STAGES

    nets = ", ".join(sorted(MODELS))
    what = "Train one network alone" if mode == "train" else "Distill a student from a teacher"
    lines = [
        f"{what} from an experiment YAML; any field can be overridden as key.sub=value.",
        "",
        "backends (backend=...): pytorch, mindspore",
        f"networks (model.name=..., teacher.name=...): {nets}",
    ]
    if mode == "distill":
        methods = ", ".join(["msa_awmse", *sorted(BASELINE_DEFAULTS)])
        lines += [
            f"methods (method.name=...): {methods}",
            f"stages (method.stages=[...]): {', '.join(STAGES)} (logit_kd: the output logits)",
            "needs teacher.checkpoint=<the teacher run's best.safetensors>",
        ]
    else:
        lines.append("method.name=none (a distillation config trains its student alone)")
    return "\n".join(lines)


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

    models = sub.add_parser("models", help="list the registered networks with parameters and MACs")
    models.add_argument(
        "--shape", default="1,1,256,256", help="input B,C,H,W for the MACs (default 1,1,256,256)"
    )
    models.add_argument("--json", help="also write the table as JSON to this file")
    models.set_defaults(func=_cmd_models)

    demo = sub.add_parser(
        "demo",
        help="the main job: teacher, student alone and MSA-AWMSE student on synthetic data",
    )
    demo.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    demo.add_argument("--config", help="demo config (default configs/demo.yaml)")
    demo.add_argument("--backend", choices=["pytorch", "mindspore"], help="override the backend")
    demo.add_argument("--out", help="output folder (default runs/demo-<time>)")
    demo.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
    demo.set_defaults(func=_cmd_demo)

    weights = sub.add_parser("weights", help="convert weights between frameworks")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION")
    wsub.required = True
    conv = wsub.add_parser(
        "convert",
        help="convert .pt/.pth <-> .safetensors (neutral) <-> .ckpt, checked strictly",
    )
    conv.add_argument("src", help="source weights (.pt, .pth, .ckpt or .safetensors)")
    conv.add_argument("dst", help="destination (format chosen by suffix)")
    conv.add_argument("--network", required=True, help="registered network (irkd models)")
    conv.add_argument(
        "--deep-supervision", action="store_true", help="the network has deep-supervision heads"
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    conv.set_defaults(func=_cmd_weights_convert)

    for mode, text in (
        ("train", "train one network alone (teacher, or a student baseline)"),
        ("distill", "distill a student from a frozen teacher"),
    ):
        p = sub.add_parser(
            mode,
            help=text,
            description=_train_description(mode),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("config", nargs="?", help="experiment YAML (optional with --resume --out)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
        p.add_argument("--out", help="run folder (default runs/<name>-<timestamp>)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
        p.set_defaults(func=_cmd_train if mode == "train" else _cmd_distill)

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
    st.add_argument("--runs-dir", default="runs/study", help="run folders (default runs/study)")
    st.add_argument("--results-dir", default="results", help="committed results (default results)")
    st.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
    st.set_defaults(func=_cmd_study)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a split (metrics, ROC, samples)")
    ev.add_argument("--run", help="a run folder (uses its best.safetensors and config)")
    ev.add_argument(
        "--weights", help="a weights file (.safetensors, .pt, .ckpt); with --run: instead of best"
    )
    ev.add_argument("--network", help="registered network (default: stored in the weights)")
    ev.add_argument("--backend", choices=["pytorch", "mindspore"], help="default: the run's")
    ev.add_argument("--data", help="dataset folder (default: the run's)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--out", help="report folder (default RUN/eval-SPLIT)")
    ev.add_argument("--ids", help="comma-separated ids to draw")
    ev.add_argument("--n-samples", type=int, default=8, help="images to draw (default 8)")
    ev.add_argument("--teacher", help="teacher weights, for its MSA maps in the figures")
    ev.add_argument("--teacher-network", help="the teacher's registered network")
    ev.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
    ev.set_defaults(func=_cmd_eval)

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
    par.set_defaults(func=_cmd_parity)

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
    steps.set_defaults(func=_cmd_bench_steps)
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
    lat.set_defaults(func=_cmd_bench_latency)
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
    par_.set_defaults(func=_cmd_bench_pareto)

    exp = sub.add_parser(
        "export", help="gated export of one network: MindIR (Ascend) and/or ONNX (Jetson)"
    )
    exp.add_argument("--weights", required=True, help="a run's best.safetensors")
    exp.add_argument("--parity", help="passing parity report for these exact weights")
    exp.add_argument("--target", choices=["ascend", "jetson", "both"], default="both")
    exp.add_argument("--out", required=True, help="output folder (must not exist)")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=_cmd_export)

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
    rel.set_defaults(func=_cmd_release)

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
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from irkd.engine import NonFiniteLossError
        from irkd.release import ReleaseError

        if not isinstance(exc, NonFiniteLossError | ReleaseError):
            raise
        # A NaN/Inf loss stops a run cleanly (the last good checkpoint kept); a failed release
        # step leaves no partial release: one line either way.
        print(f"irkd: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        # A path that cannot be read or written (read-only, a file where a folder is
        # expected, a folder where a file is expected, a full disk) is the user's to fix.
        print(f"irkd: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        # Input errors (dataset, config, files) are the user's to fix: one clear line,
        # no traceback. Anything else is a bug and keeps its traceback.
        print(f"irkd: error: {exc}", file=sys.stderr)
        return EXIT_FAIL


_OS_REASONS = {
    errno.EISDIR: "it is a folder, a file is expected there",
    errno.ENOTDIR: "a file stands where a folder is expected in that path",
    errno.EEXIST: "a file stands where a folder is expected",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ENOENT: "no such file or folder",
}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path the user gave, and why.

    Errors raised by irkd itself (no ``errno``) already carry their own message. For a
    failed atomic write the path shown is the destination, not the temporary file.
    """
    if exc.errno is None:
        return str(exc)
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    if path is None:
        return f"{exc.strerror or exc}"
    name = os.fsdecode(path)
    base = os.path.basename(name)
    if base.startswith(".") and base.endswith(".tmp"):  # an atomic write's temporary file
        name = os.path.join(os.path.dirname(name), base[1:].rsplit(".", 2)[0])
    reason = _OS_REASONS.get(exc.errno, exc.strerror or "failed")
    return f"cannot use {name}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
