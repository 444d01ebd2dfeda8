"""``irkd eval``: evaluate a checkpoint on a split (metrics, ROC, drawn samples).

The inputs (weights, network, backend, data, normalisation, teacher) are resolved from
``--run`` / ``--weights`` and the weights file into an :class:`EvalInputs` first; the scoring
itself is :func:`irkd.evaluate.evaluate_split`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from irkd.cli.common import EXIT_OK, comma_list, timestamp

if TYPE_CHECKING:
    from irkd.config import ExperimentConfig

__all__ = ["add_parser", "run", "EvalInputs", "eval_inputs"]


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

    cfg: ExperimentConfig | None
    weights: Path
    network: str
    backend: str
    root: Path
    meta: dict[str, Any]
    teacher: tuple[str, Path, dict[str, Any]] | None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``eval`` to the subcommands."""
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
    ev.set_defaults(func=run)


def eval_inputs(args: argparse.Namespace) -> EvalInputs:
    """Resolve weights, network, backend, data root, normalisation and teacher for eval.

    Raises:
        ValueError: An input is missing (weights, network, data, the teacher's network).
        FileNotFoundError: The run folder or the weights file is not there.
    """
    from irkd.weights import extra_metadata, load_neutral

    cfg, weights, network, backend = _run_or_weights(args)
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} not found")
    meta: dict[str, Any] = {}
    if weights.suffix == ".safetensors":
        arrays_meta = load_neutral(weights)[1]
        meta = dict(extra_metadata(arrays_meta))
        network = network or arrays_meta.get("network")
    if network is None:
        raise ValueError(f"{weights}: no network name stored in the file: pass --network NAME")
    root = _data_root(args, meta, cfg)
    return EvalInputs(cfg, weights, network, backend, root, meta, _teacher(args, cfg))


def _run_or_weights(
    args: argparse.Namespace,
) -> tuple[ExperimentConfig | None, Path, str | None, str]:
    """Config (``--run`` only), weights file, network (if known yet) and backend."""
    from irkd.config import load_config

    if not args.run:
        if not args.weights:
            raise ValueError("irkd eval needs --run DIR or --weights FILE")
        return None, Path(args.weights), args.network, args.backend or "pytorch"
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    weights = Path(args.weights) if args.weights else run_dir / "best.safetensors"
    return cfg, weights, args.network or cfg.model.name, args.backend or cfg.backend


def _data_root(
    args: argparse.Namespace, meta: dict[str, Any], cfg: ExperimentConfig | None
) -> Path:
    """The dataset: ``--data``, else the one stored in the weights, else the run's."""
    if args.data:
        return Path(args.data)
    if meta.get("data_root"):
        return Path(meta["data_root"])
    if cfg is not None:
        from irkd.data.prepare import resolve_dataset

        return resolve_dataset(cfg.data, args.cache)
    raise ValueError("irkd eval --weights needs --data ROOT (the dataset folder)")


def _teacher(
    args: argparse.Namespace, cfg: ExperimentConfig | None
) -> tuple[str, Path, dict[str, Any]] | None:
    """The teacher for the MSA figures: ``--teacher``, else a distilled run's own teacher."""
    from irkd.config import is_distill

    if args.teacher:
        if args.teacher_network is None:
            raise ValueError("--teacher needs --teacher-network NAME")
        return args.teacher_network, Path(args.teacher), {}
    if cfg is not None and is_distill(cfg):
        assert cfg.teacher is not None  # is_distill
        if cfg.teacher.checkpoint and Path(cfg.teacher.checkpoint).is_file():
            return cfg.teacher.name, Path(cfg.teacher.checkpoint), dict(cfg.teacher.kwargs)
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``irkd eval``: metrics, ROC and drawn samples in the report folder."""
    from irkd.data import IRSTDDataset
    from irkd.evaluate import choose_ids, evaluate_split
    from irkd.reports import format_metrics

    inp = eval_inputs(args)
    layout = inp.cfg.data.layout if inp.cfg is not None else "auto"
    dataset = IRSTDDataset(inp.root, args.split, layout=layout)
    mean, std = _normalisation(inp, layout)
    default_multiple = inp.cfg.data.eval_multiple if inp.cfg else 32
    multiple = int(inp.meta.get("eval_multiple") or default_multiple)
    pred = _predict_module(inp.backend)
    net = pred.load_network(inp.network, inp.weights)
    msa = _teacher_msa(pred, inp)
    sample_ids = comma_list(args.ids) if args.ids else choose_ids(dataset.ids, args.n_samples)
    out = _out_dir(args, inp)
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
            "backend": inp.backend,
            "teacher": str(inp.teacher[1]) if inp.teacher else None,
        },
        title=f"{inp.network} on {dataset.name}/{args.split}",
    )
    print(f"{inp.network} on {dataset.name}/{args.split}: {format_metrics(report)}")
    print(f"report written to {out} (metrics.json, roc.png, samples/: {len(report['samples'])})")
    return EXIT_OK


def _normalisation(inp: EvalInputs, layout: str) -> tuple[float, float]:
    """Mean and std stored with the weights, else computed on the training images."""
    from irkd.data import IRSTDDataset, compute_mean_std, split_train_val

    if inp.meta.get("mean") is not None and inp.meta.get("std") is not None:
        return float(inp.meta["mean"]), float(inp.meta["std"])
    train = IRSTDDataset(inp.root, "train", layout=layout)
    ids = train.ids
    if inp.cfg is not None:
        ids = split_train_val(train.ids, inp.cfg.data.val_fraction, inp.cfg.seed)[0]
    mean, std = compute_mean_std(train, ids)
    print(
        f"normalisation not stored with the weights: mean/std {mean:.3f}/{std:.3f} "
        f"computed on {len(ids)} training images"
    )
    return mean, std


def _predict_module(backend: str) -> ModuleType:
    """``torch_ref.predict`` or ``ms_impl.predict`` (imported by name: a backend may be absent)."""
    import importlib

    modname = "torch_ref.predict" if backend == "pytorch" else "ms_impl.predict"
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        raise ValueError(f"backend {backend} is not available here: {exc}") from None


def _teacher_msa(pred: ModuleType, inp: EvalInputs) -> Callable[[Any], Any] | None:
    """The teacher's MSA maps of an input batch, or None without a teacher."""
    from irkd.config import MethodConfig

    if inp.teacher is None:
        return None
    t_name, t_path, t_kwargs = inp.teacher
    teacher = pred.load_network(t_name, t_path, **t_kwargs)
    method = inp.cfg.method if inp.cfg is not None else MethodConfig()

    def msa(x: Any) -> Any:
        return pred.teacher_msa_maps(teacher, method, x)

    return msa


def _out_dir(args: argparse.Namespace, inp: EvalInputs) -> Path:
    """``--out``, else RUN/eval-SPLIT, else runs/eval-<weights>-<time>."""
    if args.out:
        return Path(args.out)
    if args.run:
        return Path(args.run) / f"eval-{args.split}"
    return Path("runs") / f"eval-{inp.weights.stem}-{timestamp()}"
