"""``irkd models``: the registered networks with their parameters and MACs.

The counts come from the PyTorch twins; the MindSpore twins' parameter counts are checked
against them where MindSpore is installed. The table itself is :mod:`irkd.reports`'.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any

from irkd.cli.common import EXIT_FAIL, EXIT_OK

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models`` to the subcommands."""
    models = sub.add_parser("models", help="list the registered networks with parameters and MACs")
    models.add_argument(
        "--shape", default="1,1,256,256", help="input B,C,H,W for the MACs (default 1,1,256,256)"
    )
    models.add_argument("--json", help="also write the table as JSON to this file")
    models.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    """Run ``irkd models``; exit 1 when the twins' parameter counts differ."""
    from irkd.reports import format_model_table, param_mismatch

    shape = _parse_shape(args.shape)
    rows, cross_checked = _model_rows(shape)
    print(format_model_table(rows, shape))
    agree = not any(param_mismatch(r) for r in rows)
    if cross_checked and agree:
        print("parameter counts agree between the MindSpore and PyTorch twins")
    if args.json:
        from irkd.files import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "shape": list(shape),
                "macs_counted": "Conv2d, ConvTranspose2d, Linear (PyTorch twin)",
                "params_agree": agree if cross_checked else None,
                "models": rows,
            },
        )
    return EXIT_OK if agree else EXIT_FAIL


def _model_rows(shape: tuple[int, int, int, int]) -> tuple[list[dict[str, Any]], bool]:
    """One row per registered network, and whether MindSpore cross-checked the parameters."""
    import torch_ref.models as tmodels
    from irkd.zoo import MODELS, stage_channels
    from torch_ref.profile import count_macs, count_ops_thop_convention
    from torch_ref.profile import count_params as torch_params

    mmodels: ModuleType | None
    try:
        import ms_impl.models as ms_models  # ms_impl first sets the oneDNN ISA for MindSpore
        from ms_impl.profile import count_params as ms_params

        mmodels = ms_models
    except ImportError as exc:  # a PyTorch-only install (e.g. a Jetson) still gets the table
        print(f"note: MindSpore side unavailable ({exc}); parameters not cross-checked")
        mmodels = None

    extra = {} if shape[1] == 1 else {"in_channels": shape[1]}
    rows: list[dict[str, Any]] = []
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
    for r in rows:
        ref = teacher_macs.get(r["family"])
        r["macs_vs_teacher"] = r["macs"] / ref if ref else None
    return rows, mmodels is not None
