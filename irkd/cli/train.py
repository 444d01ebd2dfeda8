"""``irkd train`` and ``irkd distill``: one run from an experiment YAML.

A run is data-parallel when started by ``torchrun`` (PyTorch) or ``msrun`` (MindSpore); see
:mod:`irkd.dist`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from irkd.cli.common import EXIT_OK, load_cli_config, timestamp

if TYPE_CHECKING:
    from irkd.config import ExperimentConfig
    from irkd.dist import LaunchEnv

__all__ = ["add_parser", "run", "backend_run"]

_HELP = {
    "train": "train one network alone (teacher, or a student baseline)",
    "distill": "distill a student from a frozen teacher",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train`` and ``distill`` to the subcommands."""
    for mode, text in _HELP.items():
        p = sub.add_parser(
            mode,
            help=text,
            description=_description(mode),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("config", nargs="?", help="experiment YAML (optional with --resume --out)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
        p.add_argument("--out", help="run folder (default runs/<name>-<timestamp>)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--cache", default="runs/_data", help="synthetic data cache folder")
        p.set_defaults(func=run)


def _description(mode: str) -> str:
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


def run(args: argparse.Namespace) -> int:
    """Run ``irkd train`` or ``irkd distill`` (``args.command``); returns the exit status."""
    mode = args.command
    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR (the run folder to continue)")
    config, cfg = load_cli_config(args)
    _check_mode(cfg, config, mode)
    launch = _launch(cfg, args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{timestamp()}"
    train = backend_run(cfg.backend)
    if launch.rank == 0:
        ranks = f" ({launch.size} processes, {launch.launcher})" if launch.size > 1 else ""
        print(f"irkd {mode}: {cfg.name} on {cfg.backend}{ranks} -> {out}")
    result = train(cfg, out, resume=args.resume, cache_dir=args.cache)
    metrics = result.get("metrics")
    if metrics:
        from irkd.reports import format_metrics

        print(f"{cfg.name}: test split: {format_metrics(metrics)}")
        print(f"run folder: {out}")
    return EXIT_OK


def backend_run(backend: str) -> Callable[..., dict[str, Any]]:
    """The training entry point ``run(cfg, run_dir, *, resume, cache_dir)`` of a backend."""
    if backend == "pytorch":
        from torch_ref.train import run as torch_run

        return torch_run
    try:
        from ms_impl.train import run as ms_run
    except ImportError as exc:
        raise ValueError(f"backend mindspore is not available here: {exc}") from None
    return ms_run


def _check_mode(cfg: ExperimentConfig, config: Path, mode: str) -> None:
    """Refuse a config that distills under ``train``, or does not under ``distill``."""
    from irkd.config import is_distill

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
        assert cfg.teacher is not None  # is_distill
        raise ValueError(
            f"{config}: this config distills ({cfg.method.name} from {cfg.teacher.name}): "
            "run irkd distill, or set method.name=none to train the network alone"
        )


def _launch(cfg: ExperimentConfig, args: argparse.Namespace) -> LaunchEnv:
    """The launcher of this process (torchrun / msrun), checked against the backend."""
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
    return launch
