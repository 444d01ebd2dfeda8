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
        from irkd.reports import write_json_atomic

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
    from parity.weights import convert

    kwargs = {"deep_supervision": True} if args.deep_supervision else None
    rep = convert(args.src, args.dst, network=args.network, model_kwargs=kwargs)
    print(f"wrote {rep.dst}: {rep.tensors} tensors, sha256 {rep.sha256}")
    if rep.dropped:
        shown = ", ".join(rep.dropped[:5]) + (" ..." if len(rep.dropped) > 5 else "")
        print(f"dropped {len(rep.dropped)} non-network entries: {shown}")
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

    models = sub.add_parser("models", help="list the registered networks with parameters and MACs")
    models.add_argument(
        "--shape", default="1,1,256,256", help="input B,C,H,W for the MACs (default 1,1,256,256)"
    )
    models.add_argument("--json", help="also write the table as JSON to this file")
    models.set_defaults(func=_cmd_models)

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
    conv.set_defaults(func=_cmd_weights_convert)

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
