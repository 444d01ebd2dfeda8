"""Framework-free training machinery shared by ``torch_ref.train`` and ``ms_impl.train``.

Everything here is numpy, YAML, JSON and tqdm only, so both backends run the same data,
schedule, bookkeeping and evaluation code and differ only in their train step.

API (in the order a training loop uses it):

- :func:`resolve_dataset` ``(data_cfg, cache_dir, *, seed=0, size=256) -> Path``: the dataset
  root (``data.root``, or the built-in synthetic dataset, generated once under
  ``cache_dir/"synth-n{N}-s{seed}"`` and reused afterwards).
- :func:`prepare_data` ``(cfg, cache_dir) -> PreparedData``: train/val ids carved from the
  TRAIN split (:func:`irkd.data.split_train_val` with ``cfg.seed``), mean/std on the train
  ids only, a :class:`irkd.data.TrainBatches`, the validation dataset view, and the test
  split opened lazily (:meth:`PreparedData.test_set`). The test split is never used to
  choose a checkpoint.
- :func:`steps_per_epoch` ``(batches, schedule_cfg) -> int``: ``len(batches)`` capped by
  ``schedule.steps_per_epoch``.
- :func:`lr_at` ``(step, steps_per_epoch, optim_cfg, schedule_cfg) -> float``: learning rate
  of global step ``step`` (0-based): linear warm-up, then cosine to ``min_lr`` / step decay /
  constant.
- :func:`ema_decay` ``(ema, step) -> float``: decay of the student's weight average after
  optimizer step ``step`` (1-based), ``min(ema, (1 + step) / (10 + step))`` (``train.ema``;
  ``torch_ref.ema.ModelEma`` and ``ms_impl.ema.ModelEma`` apply it); :data:`EMA_FILE` and
  :func:`require_ema_file` for the average's checkpoint file.
- :func:`noise_for` ``(seed, step, shapes) -> tuple[np.ndarray, ...]``: the per-stage uniform
  [0, 1) float32 noise of global step ``step`` (MGD), drawn from
  ``np.random.default_rng([seed, step, 7])``; an empty shape ``()`` gives a float32 0-d zero
  and draws nothing.
- :func:`check_finite` ``(value, *, where, last_good=None)``: raise
  :class:`NonFiniteLossError` when a loss (or any term of a mapping of terms) is NaN/Inf.
- :func:`check_run_folder` ``(path, cfg, *, resume)`` and :func:`run_folder_lock`
  ``(path)``: a run folder is new, empty or marked (:data:`RUN_MARKER`, a study's
  :data:`STUDY_MARKER`, or an older run with a checkpoint) and of the same config, else
  :class:`RunFolderError`; one process writes it at a time (``flock``).
- :class:`RunDir` ``(path)``: the run folder layout (``config.yaml``, ``log.jsonl``,
  ``checkpoints/last/``, ``best.safetensors``, ``best.json``, ``last.safetensors``,
  ``metrics.json``), with
  :meth:`RunDir.write_checkpoint` (atomic folder write, older ``last`` kept as
  ``checkpoints/epoch_NNNN`` up to ``keep_last``) and :meth:`RunDir.read_state`.
- :func:`atomic_dir` ``(final)``: context manager yielding a temporary sibling folder that
  replaces ``final`` only once it is complete.
- :class:`TrainState`: ``epoch`` (completed epochs = index of the next epoch to run),
  ``step`` (global steps done), ``best_score``, ``best_epoch``; JSON round trip.
- :class:`JsonlLogger`: one JSON object a line, flushed per record.
- :func:`predict_split` / :class:`Evaluator` / :func:`evaluate_predictions`: sigmoid
  probabilities of full padded images cropped back, scored with
  :class:`irkd.metrics.IRSTDMetrics`.
- :func:`progress`: tqdm bars (auto-disabled when stderr is not a TTY).
- :func:`run_training` ``(cfg, run_dir, make_trainer, *, resume, cache_dir, synth_size,
  stop_after, quiet) -> dict``: a whole run (run folder and resume checks, data, epochs,
  log records, progress bars, test report) around a backend's :class:`Trainer` (the
  protocol ``torch_ref.train.TorchTrainer`` and ``ms_impl.train.MSTrainer`` follow:
  ``backend``, ``cfg``, ``student_kwargs``; ``train_mode``, ``step``, ``write``, ``read``,
  ``eval_forward``, ``save_best``, ``bare_forward``, ``run_info``). Its pieces:
  :func:`run_epoch` (train, validate, keep the best, checkpoint), :func:`validate`,
  :func:`weights_metadata`, :func:`final_report` (best weights on the TEST split,
  ``metrics.json``), :func:`last_report` (the last epoch's weights saved as
  ``last.safetensors`` and scored on the TEST split: ``metrics.json["last"]``). A complete
  ``metrics.json`` also holds ``best_val``, ``last_epoch`` and ``wall_s`` (wall seconds of
  the run, summed over resumed segments through ``checkpoints/last/timing.json``).

Conventions: epochs are 0-based in code and in ``state.json`` (``TrainState.epoch`` counts
completed epochs); log records carry ``epoch`` 1-based (the epoch being run, as the
progress bar shows it) and ``step`` as the 1-based global step just finished.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from irkd.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    NetConfig,
    OptimConfig,
    ScheduleConfig,
    config_to_dict,
    is_distill,
    load_config,
    save_config,
)
from irkd.data import (
    DatasetError,
    IRSTDDataset,
    TrainBatches,
    compute_mean_std,
    crop_back,
    iter_eval,
    require_targets,
    split_train_val,
    synthesize,
    verify_split,
)
from irkd.dist import ShardedBatches, World
from irkd.metrics import IRSTDMetrics
from irkd.reports import file_mode, to_jsonable, write_json_atomic, write_text_atomic
from irkd.zoo import get_spec

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run folder lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "net_kwargs",
    "check_same_config",
    "EMA_FILE",
    "Evaluator",
    "Forward",
    "JsonlLogger",
    "LOCK_NAME",
    "NonFiniteLossError",
    "PreparedData",
    "RUN_MARKER",
    "RunDir",
    "RunFolderError",
    "STUDY_MARKER",
    "TrainState",
    "Trainer",
    "atomic_dir",
    "check_finite",
    "check_run_folder",
    "ema_decay",
    "evaluate_predictions",
    "final_report",
    "last_report",
    "lr_at",
    "noise_for",
    "predict_split",
    "prepare_data",
    "progress",
    "require_ema_file",
    "resolve_dataset",
    "resolved_config",
    "restore_checkpoint",
    "resume_changes",
    "run_epoch",
    "run_folder_lock",
    "run_training",
    "sigmoid",
    "steps_per_epoch",
    "subset",
    "test_metrics",
    "validate",
    "weights_metadata",
]

NOISE_SALT = 7
"""Third word of the noise RNG seed, ``default_rng([seed, step, NOISE_SALT])``."""


# ----------------------------------------------------------------------------- data


def resolve_dataset(
    data_cfg: DataConfig, cache_dir: str | os.PathLike[str], *, seed: int = 0, size: int = 256
) -> Path:
    """Return the dataset root of a config, generating the synthetic dataset if needed.

    Args:
        data_cfg: ``cfg.data``; ``root`` is returned as is when set.
        cache_dir: Folder for the synthetic dataset (e.g. ``runs/_data``).
        seed: Seed of the synthetic dataset (a property of the data, not of the run, so the
            teacher and the students of one study see the same images).
        size: Image side of the synthetic dataset.

    Returns:
        ``Path(data_cfg.root)``, or ``cache_dir/"synth-n{N}-s{seed}"`` (``-z{size}`` is
        appended when ``size != 256``), generated on first use and reused afterwards.
    """
    if data_cfg.root is not None:
        return Path(data_cfg.root)
    n = int(data_cfg.synth_n)
    name = f"synth-n{n}-s{seed}" + ("" if size == 256 else f"-z{size}")
    root = Path(cache_dir) / name
    if (root / "train.txt").is_file() and (root / "test.txt").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Generate into a temporary sibling, then rename: a killed generation leaves no
    # half-written dataset that a later run would mistake for a complete one.
    with atomic_dir(root) as tmp:
        synthesize(tmp, n, seed=seed, size=size)
    return root


def subset(dataset: IRSTDDataset, ids: Sequence[str], split: str) -> IRSTDDataset:
    """A shallow copy of ``dataset`` restricted to ``ids`` (which must belong to it)."""
    known = set(dataset.ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(f"subset: ids not in split {dataset.split!r}: {', '.join(unknown[:5])}")
    view = copy.copy(dataset)
    view.ids = list(ids)
    view.split = split
    return view


@dataclass
class PreparedData:
    """Everything a training loop needs from the data side.

    Attributes:
        root: Dataset root.
        layout: Dataset layout (``cfg.data.layout``).
        train_set: The TRAIN split (all its ids).
        train_ids: Ids trained on (train split minus validation).
        val_ids: Ids used to choose the best checkpoint (a part of the train split).
        val_set: ``train_set`` restricted to ``val_ids`` (for :func:`predict_split`).
        mean: Normalisation mean (0..255), computed on ``train_ids`` only.
        std: Normalisation std (0..255), computed on ``train_ids`` only.
        batches: Training batches (epoch ``e`` from ``default_rng([seed, e])``).
        multiple: Evaluation padding multiple (``cfg.data.eval_multiple``).
    """

    root: Path
    layout: str
    train_set: IRSTDDataset
    train_ids: list[str]
    val_ids: list[str]
    val_set: IRSTDDataset
    mean: float
    std: float
    batches: TrainBatches
    multiple: int

    def test_set(self, split: str = "test") -> IRSTDDataset:
        """Open the test split (only for the final report, never for selection)."""
        return IRSTDDataset(self.root, split, layout=self.layout)

    def info(self) -> dict[str, Any]:
        """JSON-ready summary (root, sizes, mean/std) for logs and reports."""
        return {
            "root": str(self.root),
            "n_train": len(self.train_ids),
            "n_val": len(self.val_ids),
            "mean": self.mean,
            "std": self.std,
            "batches_per_epoch": len(self.batches),
        }


def prepare_data(
    cfg: ExperimentConfig, cache_dir: str | os.PathLike[str], *, synth_size: int = 256
) -> PreparedData:
    """Open the training split, carve the validation part and build the batches.

    Args:
        cfg: The experiment (``data``, ``seed``).
        cache_dir: Where the synthetic dataset lives (see :func:`resolve_dataset`).
        synth_size: Image side of the synthetic dataset when ``data.root`` is None.

    Returns:
        The prepared data.

    Raises:
        DatasetError: A missing or broken dataset folder.
        ValueError: Too few training ids for one batch.
    """
    d = cfg.data
    root = resolve_dataset(d, cache_dir, size=synth_size)
    train_set = IRSTDDataset(root, "train", layout=d.layout)
    train_ids, val_ids = split_train_val(train_set.ids, d.val_fraction, cfg.seed)
    test_set = IRSTDDataset(root, "test", layout=d.layout)
    # Fail before training, not with IoU nan or a broken file after it: both splits must
    # decode, be disjoint and hold a target, and a crop must fit the images.
    overlap = sorted(set(train_set.ids) & set(test_set.ids))
    if overlap:
        raise DatasetError(
            f"{len(overlap)} ids of {root} are in both the train and the test split "
            f"({', '.join(overlap[:3])}{' ...' if len(overlap) > 3 else ''}): a model would be "
            f"tested on images it trained on; fix {train_set.split_file.name} / "
            f"{test_set.split_file.name}"
        )
    top_h, top_w = verify_split(train_set)
    verify_split(test_set)
    require_targets(train_set, train_ids)
    require_targets(test_set)
    if d.crop > max(top_h, top_w):
        raise ConfigError(
            f"data.crop: {d.crop} is larger than every training image of {root} (largest "
            f"{top_h}x{top_w}); a crop that large is mostly zero padding and costs "
            f"{d.crop * d.crop / (top_h * top_w):.0f}x the memory: use data.crop <= "
            f"{max(top_h, top_w) // 32 * 32}"
        )
    mean, std = compute_mean_std(train_set, train_ids)
    if not std > 0:
        raise ValueError(f"training images of {root} have zero variance (std 0)")
    batches = TrainBatches(
        train_set,
        train_ids,
        batch_size=d.batch_size,
        crop=d.crop,
        mean=mean,
        std=std,
        seed=cfg.seed,
        target_bias=d.target_bias,
        drop_last=True,
    )
    return PreparedData(
        root=root,
        layout=d.layout,
        train_set=train_set,
        train_ids=train_ids,
        val_ids=val_ids,
        val_set=subset(train_set, val_ids, "train[val]"),
        mean=mean,
        std=std,
        batches=batches,
        multiple=d.eval_multiple,
    )


def steps_per_epoch(batches: TrainBatches | int, schedule_cfg: ScheduleConfig) -> int:
    """Number of steps of each epoch: the batches, capped by ``schedule.steps_per_epoch``."""
    n = batches if isinstance(batches, int) else len(batches)
    cap = schedule_cfg.steps_per_epoch
    return int(n if cap is None else min(n, cap))


# ----------------------------------------------------------------------------- schedule


def lr_at(
    step: int, steps_per_epoch: int, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig
) -> float:
    """Learning rate of global step ``step`` (0-based), updated every step.

    - Warm-up (``warmup_epochs`` > 0): ``lr * (step + 1) / warmup_steps`` for the first
      ``warmup_steps = warmup_epochs * steps_per_epoch`` steps.
    - ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with
      ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, so the first step after
      warm-up runs at ``lr`` and the curve ends just above ``min_lr``.
    - ``step``: ``lr * gamma ** (epoch // step_epochs)``, ``epoch = step // steps_per_epoch``.
    - ``constant``: ``lr``.

    Args:
        step: Global step index (0-based).
        steps_per_epoch: Steps of one epoch (>= 1).
        optim_cfg: Peak ``lr``.
        schedule_cfg: Scheduler, ``epochs``, ``warmup_epochs``, ``min_lr``, ``step_epochs``,
            ``gamma``.

    Returns:
        The learning rate (a Python float).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"lr_at: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    base = float(optim_cfg.lr)
    warm = int(schedule_cfg.warmup_epochs) * steps_per_epoch
    if step < warm:
        return base * (step + 1) / warm
    kind = schedule_cfg.scheduler
    if kind == "constant":
        return base
    if kind == "step":
        epoch = step // steps_per_epoch
        return base * float(schedule_cfg.gamma) ** (epoch // max(1, schedule_cfg.step_epochs))
    total = int(schedule_cfg.epochs) * steps_per_epoch
    span = max(1, total - warm)
    t = min(1.0, (step - warm) / span)
    lo = float(schedule_cfg.min_lr)
    return lo + (base - lo) * 0.5 * (1.0 + math.cos(math.pi * t))


def ema_decay(ema: float, step: int) -> float:
    """Decay of the student's weight average (``train.ema``) after optimizer step ``step``.

    ``min(ema, (1 + step) / (10 + step))``: the warm-up of TensorFlow's
    ``ExponentialMovingAverage(decay, num_updates)``, so that the early average is not
    dominated by the initial weights (0.18 after step 1, 0.5 after step 8, 0.9 after step
    80, 0.99 after step 890). Both backends then update every floating-point tensor of the
    student in float32, in this order::

        e = e * float32(d) + w * float32(1 - d)     # three roundings: mul, mul, add

    with ``1 - d`` computed in float64 before its rounding to float32.

    Args:
        ema: The configured decay, in [0, 1).
        step: Optimizer steps done, counting the one just made (>= 1: the global step
            after the update).

    Returns:
        The decay ``d`` (a Python float).
    """
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema_decay: ema must be in [0, 1), got {ema!r}")
    if step < 1:
        raise ValueError(f"ema_decay: step must be >= 1 (steps done), got {step}")
    return min(float(ema), (1.0 + step) / (10.0 + step))


EMA_FILE = "ema.safetensors"
"""Checkpoint file of the student's weight average (``train.ema`` > 0), neutral weights."""


def require_ema_file(folder: str | os.PathLike[str], ema: float) -> Path:
    """The weight average of a checkpoint folder, which ``train.ema`` > 0 needs to resume.

    Raises:
        ConfigError: ``folder/ema.safetensors`` is missing (one line).
    """
    path = Path(folder) / EMA_FILE
    if not path.is_file():
        raise ConfigError(
            f"--resume: {path} not found: train.ema={ema:g} needs the weight average to resume "
            "exactly, and this checkpoint was written without one; start a new run"
        )
    return path


# ----------------------------------------------------------------------------- randomness


def noise_for(seed: int, step: int, shapes: Iterable[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    """Uniform [0, 1) float32 noise for one global step, the same on both backends.

    Drawn from ``np.random.default_rng([seed, step, NOISE_SALT])`` in the order of
    ``shapes``. An empty shape ``()`` (a stage that needs no noise) yields a float32 0-d
    zero without drawing, so the stages that do draw see the same numbers whatever the
    others need.

    Args:
        seed: Experiment seed.
        step: Global step (0-based index of the step about to run).
        shapes: One shape per distilled stage (``Distiller.noise_shapes``).

    Returns:
        A tuple of float32 arrays, one per shape.
    """
    rng = np.random.default_rng([int(seed), int(step), NOISE_SALT])
    out = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        if shape == ():
            out.append(np.zeros((), np.float32))
        else:
            out.append(rng.random(shape, dtype=np.float32))
    return tuple(out)


# ----------------------------------------------------------------------------- failures


class NonFiniteLossError(RuntimeError):
    """A loss (or one of its terms) became NaN or infinite; the run stopped.

    The message names where (epoch/step), the terms and the last good checkpoint.
    """


def check_finite(
    value: float | Mapping[str, float],
    *,
    where: str,
    last_good: str | os.PathLike[str] | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` when a loss value or a term is NaN/Inf.

    Args:
        value: A float, or a mapping of term name -> float (all are checked and all shown).
        where: Position, e.g. ``"epoch 3, step 120"``.
        last_good: The last checkpoint folder written (it is left untouched), or None.

    Raises:
        NonFiniteLossError: With a one-line message.
    """
    terms = dict(value) if isinstance(value, Mapping) else {"loss": value}
    values = {k: float(v) for k, v in terms.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return
    shown = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
    if last_good is not None and Path(last_good).is_dir():
        tail = f"last good checkpoint: {last_good} (kept; --resume restarts from it)"
    else:
        tail = "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"non-finite loss at {where} ({', '.join(bad)} not finite: {shown}); run stopped; "
        f"{tail}; lower optim.lr or check the data"
    )


# ----------------------------------------------------------------------------- files


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _recover_dir(final: Path) -> None:
    """Undo an interrupted :func:`atomic_dir` swap and drop stale temporary folders."""
    parent = final.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{final.name}.old-*"))
    if not final.exists() and olds:
        olds[-1].rename(final)  # the swap stopped between its two renames
        olds = olds[:-1]
    for p in olds + sorted(parent.glob(f".{final.name}.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike[str], *, keep_old: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Write a folder completely, then put it in place of ``final``.

    Yields a fresh temporary sibling folder (``.NAME.tmp-*``). On success every file in it
    is fsynced, an existing ``final`` is renamed aside (``.NAME.old-*``), the temporary
    folder is renamed to ``final``, and only then the old folder is removed (or moved to
    ``keep_old``). On an exception the temporary folder is removed and ``final`` is left
    as it was. A swap interrupted between its two renames is repaired on the next call.

    Args:
        final: Destination folder.
        keep_old: Where to move the replaced folder instead of deleting it.

    Yields:
        The temporary folder to write into.
    """
    final = Path(final).resolve()  # "." has no usable name or sibling: resolve it first
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, file_mode(0o777))  # mkdtemp makes 0700: follow the umask instead
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        old.rmdir()
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        if keep_old is not None:
            keep = Path(keep_old)
            if keep.exists():
                shutil.rmtree(keep)
            old.rename(keep)
        else:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class TrainState:
    """Where a run stands; saved as ``state.json`` in each checkpoint.

    Attributes:
        epoch: Completed epochs (= 0-based index of the next epoch to run).
        step: Global optimizer steps done.
        best_score: Best validation score so far (val IoU), None before any validation.
        best_epoch: 1-based epoch of ``best_score``, None before any validation.
        extra: Free JSON-ready data (backend, data position, ...).
    """

    epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return to_jsonable(asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainState:
        """Inverse of :meth:`to_json` (unknown keys are ignored)."""
        best = data.get("best_score")
        best_epoch = data.get("best_epoch")
        return cls(
            epoch=int(data.get("epoch", 0)),
            step=int(data.get("step", 0)),
            best_score=None if best is None else float(best),
            best_epoch=None if best_epoch is None else int(best_epoch),
            extra=dict(data.get("extra") or {}),
        )


class JsonlLogger:
    """Append JSON records, one a line, flushed after each (``tail -f`` friendly)."""

    def __init__(self, path: str | os.PathLike[str], *, fresh: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w" if fresh else "a"  # fresh: start the file anew
        self._fh = open(self.path, mode, encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record (numpy values and NaN are converted, see ``to_jsonable``).

        When stderr is not a terminal (CI logs, ``nohup``), where the progress bars are
        silent, epoch and validation records are also echoed as one short line on stdout.
        """
        self._fh.write(json.dumps(to_jsonable(dict(record)), allow_nan=False) + "\n")
        self._fh.flush()
        if not sys.stderr.isatty():
            line = echo_line(record)
            if line:
                print(line, flush=True)

    def close(self) -> None:
        """Close the file."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_line(record: Mapping[str, Any]) -> str | None:
    """One human line for an ``epoch`` or ``val`` log record (None for other kinds)."""
    kind = record.get("kind")
    if kind == "epoch":
        terms = " ".join(
            f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("mean_") and v is not None
        )
        return (
            f"  epoch {record.get('epoch')}: {terms} "
            f"({record.get('train_s', 0.0):.1f} s, {record.get('images_per_s', 0.0):.1f} img/s)"
        )
    if kind == "val":
        iou = record.get("iou")
        if iou is None:
            return None
        return f"  epoch {record.get('epoch')}: val IoU {100 * iou:.2f}%"
    return None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file (a torn last line, from a killed process, is skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class _NullLog:
    """The logger of a data-parallel rank > 0: records go nowhere (rank 0 writes the log)."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Drop ``record``."""


class RunDir:
    """The layout of a run folder (created on construction).

    Attributes:
        path: The run folder.
        config: ``config.yaml`` (resolved config).
        log: ``log.jsonl``.
        checkpoints: ``checkpoints/``.
        last: ``checkpoints/last/`` (``state.json`` + backend files).
        best: ``best.safetensors`` (student only, neutral weights).
        best_json: ``best.json`` (epoch and validation metrics of ``best``).
        metrics: ``metrics.json`` (test metrics of ``best``, and under ``last`` those of
            ``last_weights``, written at the end).
        last_weights: ``last.safetensors`` (the student after the last epoch, neutral
            weights, written at the end).
    """

    STATE = "state.json"
    TIMING = "timing.json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = self.path / "config.yaml"
        self.log = self.path / "log.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last"
        self.best = self.path / "best.safetensors"
        self.best_json = self.path / "best.json"
        self.metrics = self.path / "metrics.json"
        self.last_weights = self.path / "last.safetensors"
        if self.checkpoints.is_dir():
            _recover_dir(self.last)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def save_config(self, cfg: ExperimentConfig) -> Path:
        """Write the config (``irkd.config.save_config``), ``data.root`` made absolute."""
        save_config(resolved_config(cfg), self.config)
        return self.config

    def logger(self, *, fresh: bool = False) -> JsonlLogger:
        """An appending :class:`JsonlLogger` on ``log.jsonl`` (``fresh``: started anew)."""
        return JsonlLogger(self.log, fresh=fresh)

    def records(self) -> list[dict[str, Any]]:
        """The records of ``log.jsonl``."""
        return read_jsonl(self.log)

    def trim_log(self, completed_epochs: int) -> None:
        """Keep only records of epochs ``<= completed_epochs`` (1-based) before a resume.

        Records written after the checkpoint (a run killed mid-epoch) would otherwise
        appear twice; records without an ``epoch`` (run headers) are kept.
        """
        if not self.log.is_file():
            return
        keep = [
            r
            for r in read_jsonl(self.log)
            if r.get("epoch") is None or int(r["epoch"]) <= completed_epochs
        ]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        tmp = self.log.with_suffix(".jsonl.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.log)

    def has_checkpoint(self) -> bool:
        """Whether ``checkpoints/last/state.json`` exists."""
        return (self.last / self.STATE).is_file()

    def read_state(self) -> TrainState:
        """The :class:`TrainState` of ``checkpoints/last``.

        Raises:
            FileNotFoundError: No checkpoint to resume from.
        """
        path = self.last / self.STATE
        if not path.is_file():
            raise FileNotFoundError(
                f"no checkpoint to resume from in {self.path} (expected {path})"
            )
        return TrainState.from_json(json.loads(path.read_text(encoding="utf-8")))

    def read_wall_s(self, folder: Path | None = None) -> float:
        """Wall seconds the run had spent when a checkpoint was written (0.0 if unknown).

        Kept in ``<checkpoint>/timing.json`` (next to ``state.json``, not in it, so that
        the state of a resumed run stays equal to that of an uninterrupted one).

        Args:
            folder: The checkpoint folder (default ``checkpoints/last``).
        """
        path = (self.last if folder is None else folder) / self.TIMING
        if not path.is_file():
            return 0.0
        try:
            return float(json.loads(path.read_text(encoding="utf-8")).get("wall_s", 0.0))
        except (ValueError, TypeError, AttributeError):
            return 0.0

    def write_checkpoint(
        self,
        state: TrainState,
        write: Callable[[Path], None],
        *,
        keep_last: int = 1,
        wall_s: float | None = None,
    ) -> Path:
        """Write ``checkpoints/last`` atomically.

        ``write(folder)`` stores the backend's files (weights, optimizer) in a temporary
        folder; ``state.json`` (and ``timing.json`` with ``wall_s``, the run's wall seconds
        so far, when given) is added; the folder then replaces ``checkpoints/last``. With
        ``keep_last > 1`` the replaced checkpoint is kept as ``checkpoints/epoch_NNNN``
        (its 1-based completed epoch), and the oldest ones beyond ``keep_last - 1`` are
        removed.

        Returns:
            ``checkpoints/last``.
        """
        keep_old = None
        if keep_last > 1 and self.has_checkpoint():
            prev = self.read_state()
            keep_old = self.checkpoints / f"epoch_{prev.epoch:04d}"
        with atomic_dir(self.last, keep_old=keep_old) as tmp:
            write(tmp)
            write_json_atomic(tmp / self.STATE, state.to_json())
            if wall_s is not None:
                write_json_atomic(tmp / self.TIMING, {"wall_s": float(wall_s)})
        kept = sorted(self.checkpoints.glob("epoch_[0-9][0-9][0-9][0-9]"))
        for old in kept[: max(0, len(kept) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return self.last


# ----------------------------------------------------------------------------- evaluation


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32 out."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = 1.0 / (1.0 + np.exp(-x))
    return out.astype(np.float32)


def predict_split(
    dataset: IRSTDDataset,
    forward: Callable[[np.ndarray], np.ndarray],
    *,
    mean: float,
    std: float,
    multiple: int = 32,
    desc: str | None = None,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Run a network over a split at native resolution.

    Each image is normalised and padded (:func:`irkd.data.iter_eval`), ``forward`` maps the
    (1, 1, Hp, Wp) float32 array to logits of the same shape (a numpy array), the sigmoid is
    applied and the padding cropped back.

    Yields:
        (id, probability float32 (H, W), mask uint8 (H, W)).
    """
    items = iter_eval(dataset, mean=mean, std=std, multiple=multiple)
    for id_, x, mask, hw in progress(items, total=len(dataset), desc=desc or "eval", leave=False):
        logits = np.asarray(forward(x))
        if logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"predict_split: network output {logits.shape} does not match input {x.shape}"
            )
        prob = crop_back(sigmoid(logits.reshape(x.shape[-2:])), hw)
        yield id_, np.ascontiguousarray(prob), mask


class Evaluator:
    """Accumulate IRSTD metrics over (id, prob, mask) and keep chosen probability maps.

    Args:
        threshold: Pixel threshold (``prob > threshold``).
        keep: Ids whose probability maps are kept in :attr:`kept` (for sample figures).
    """

    def __init__(self, *, threshold: float = 0.5, keep: Iterable[str] = ()) -> None:
        self.metrics = IRSTDMetrics(threshold=threshold)
        self.keep = set(keep)
        self.kept: dict[str, np.ndarray] = {}
        self.ids: list[str] = []

    def update(self, id_: str, prob: np.ndarray, mask: np.ndarray) -> None:
        """Add one image."""
        self.metrics.update(prob, mask)
        self.ids.append(id_)
        if id_ in self.keep:
            self.kept[id_] = prob

    def result(self) -> dict[str, Any]:
        """The metrics, ROC, ids seen and kept maps.

        Returns:
            ``{"metrics": IRSTDMetrics.compute(), "roc": IRSTDMetrics.roc(), "ids": [...],
            "kept": {id: prob}}``.
        """
        return {
            "metrics": self.metrics.compute(),
            "roc": self.metrics.roc(),
            "ids": list(self.ids),
            "kept": dict(self.kept),
        }


def evaluate_predictions(
    pred_iter: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    threshold: float = 0.5,
    keep: Iterable[str] = (),
) -> dict[str, Any]:
    """Score an iterator of (id, prob (H, W), mask (H, W)) such as :func:`predict_split`.

    Returns:
        ``{"metrics", "roc", "ids", "kept"}`` (see :meth:`Evaluator.result`); the metrics
        dict has ``iou``, ``niou``, ``pd``, ``fa``, ``fa_1e6`` and the counts.
    """
    ev = Evaluator(threshold=threshold, keep=keep)
    for id_, prob, mask in pred_iter:
        ev.update(id_, prob, mask)
    return ev.result()


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of a metrics dict: IoU, nIoU, Pd, Fa (x 1e-6) and counts."""
    keys = ("iou", "niou", "pd", "fa", "fa_1e6", "n_images", "n_targets")
    return {k: metrics.get(k) for k in keys}


# ----------------------------------------------------------------------------- progress


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    leave: bool = True,
    initial: int = 0,
    unit: str = "it",
) -> Any:
    """A tqdm bar on stderr, disabled automatically when stderr is not a TTY.

    Epoch bars use ``leave=True``; step and evaluation bars ``leave=False``.
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=leave,
        initial=initial,
        unit=unit,
        disable=None,
        dynamic_ncols=True,
    )


# ----------------------------------------------------------------------------- configs


def net_kwargs(net: NetConfig, *, deep_supervision: bool = False) -> dict[str, Any]:
    """Constructor kwargs of a network config (plus ``deep_supervision`` for DNANet).

    Raises:
        ConfigError: Deep supervision asked of a family without side heads (U-Net).
    """
    kwargs = dict(net.kwargs)
    if deep_supervision:
        family = get_spec(net.name).family
        if family != "dnanet":
            raise ConfigError(
                f"train.deep_supervision: {net.name} ({family}) has no deep-supervision heads; "
                "set train.deep_supervision=false"
            )
        kwargs["deep_supervision"] = True
    return kwargs


def _resolved_root(root: str | None) -> str | None:
    """``data.root`` as an absolute path (None stays None: the synthetic dataset)."""
    return None if root is None else str(Path(root).expanduser().resolve())


def resolved_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``data.root`` absolute: a run folder's config.yaml resumes from anywhere."""
    root = _resolved_root(cfg.data.root)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def _config_diff(saved_path: Path, cfg: ExperimentConfig, *, resume: bool = False) -> list[str]:
    """Top-level keys in which ``cfg`` differs from the config saved at ``saved_path``.

    ``schedule.epochs`` may differ (a run continued for longer); ``data.root`` is compared
    resolved, and may differ on resume (a moved dataset; :func:`resume_changes` records it).
    """
    saved = config_to_dict(load_config(saved_path))
    now = config_to_dict(cfg)
    saved["schedule"]["epochs"] = now["schedule"]["epochs"]
    if resume:
        saved["data"]["root"] = now["data"]["root"]
    else:
        saved["data"]["root"] = _resolved_root(saved["data"]["root"])
        now["data"]["root"] = _resolved_root(now["data"]["root"])
    return [k for k in now if now[k] != saved.get(k)]


def resume_changes(saved_path: Path, cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """What a resume changes that :func:`check_run_folder` allows: ``{"key": [old, new]}``.

    Only ``schedule.epochs`` and ``data.root`` (compared resolved) can appear; the resumed
    run logs them as a ``resume`` record, so a changed run says so in its own log.
    """
    if not saved_path.is_file():
        return {}
    saved = load_config(saved_path)
    out: dict[str, list[Any]] = {}
    if saved.schedule.epochs != cfg.schedule.epochs:
        out["schedule.epochs"] = [saved.schedule.epochs, cfg.schedule.epochs]
    if _resolved_root(saved.data.root) != _resolved_root(cfg.data.root):
        out["data.root"] = [saved.data.root, _resolved_root(cfg.data.root)]
    return out


def check_same_config(run: RunDir, cfg: ExperimentConfig) -> None:
    """On resume, refuse a config that differs from the run's (``schedule.epochs`` aside)."""
    if not run.config.is_file():
        return
    diff = _config_diff(run.config, cfg, resume=True)
    if diff:
        raise ConfigError(
            f"--resume: the config differs from {run.config} in {', '.join(diff)}; "
            "resume with the run's own config.yaml"
        )


# ----------------------------------------------------------------------------- run folders

RUN_MARKER = ".irkd-run"
"""Marker file of a run folder, written when :func:`run_training` takes the folder."""

STUDY_MARKER = ".irkd-study-run"
"""Marker of a run folder made by ``irkd study`` (``irkd.study.results.MARKER``)."""

LOCK_NAME = ".irkd-lock"
"""Lock file of a run folder (``flock``, held by the one process writing the folder)."""


class RunFolderError(ValueError):
    """A folder ``irkd train/distill`` may not write: someone else's, another run's, or busy."""


def _has_checkpoint(path: Path) -> bool:
    """``checkpoints/last/state.json``, or a swap of it interrupted between its renames."""
    last = path / "checkpoints" / "last"
    if (last / RunDir.STATE).is_file():
        return True
    olds = path / "checkpoints"
    return olds.is_dir() and any(
        (p / RunDir.STATE).is_file() for p in olds.glob(f".{last.name}.old-*")
    )


def _own_leftover(name: str) -> bool:
    """The lock, or the temporary file of a marker write that a kill interrupted."""
    return name == LOCK_NAME or (name.startswith(f"{RUN_MARKER}.") and name.endswith(".tmp"))


def check_run_folder(
    path: str | os.PathLike[str], cfg: ExperimentConfig, *, resume: bool = False
) -> None:
    """Refuse a run folder that :func:`run_training` may not write (it only reads here).

    Accepted: a folder that does not exist yet, an empty one (a stale :data:`LOCK_NAME`
    aside), or a run folder: one with :data:`RUN_MARKER` or :data:`STUDY_MARKER`, or one
    made by an older version (``config.yaml`` and ``checkpoints/last/state.json``, no
    marker), whose ``config.yaml`` (if any) is that of ``cfg`` (``schedule.epochs`` aside).
    A fresh run also needs a folder without a checkpoint, a resume one with a checkpoint.

    Raises:
        RunFolderError: A file, someone else's folder, or the run folder of another config.
        FileExistsError: A fresh run in a folder that holds a checkpoint (pass ``resume``).
        FileNotFoundError: ``resume`` without a checkpoint.
        ConfigError: ``resume`` with a config that differs from the run's.
    """
    path = Path(path)
    no_ckpt = f"no checkpoint to resume from in {path} (expected checkpoints/last/state.json)"
    if not path.exists():
        if resume:
            raise FileNotFoundError(no_ckpt)
        return
    if not path.is_dir():
        raise RunFolderError(f"--out {path} is not a folder: give a new or empty folder")
    names = sorted(p.name for p in path.iterdir() if not _own_leftover(p.name))
    if not names:
        if resume:
            raise FileNotFoundError(no_ckpt)
        return
    has_ckpt = _has_checkpoint(path)
    marked = (path / RUN_MARKER).is_file() or (path / STUDY_MARKER).is_file()
    legacy = has_ckpt and (path / "config.yaml").is_file()
    if not (marked or legacy):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise RunFolderError(
            f"--out {path} is not an irkd run folder (it holds {shown} and no {RUN_MARKER}): "
            "irkd writes only into a new or empty folder or a run folder of its own, so it "
            "leaves this one untouched; choose another --out"
        )
    config = path / "config.yaml"
    if config.is_file():
        try:
            diff = _config_diff(config, cfg, resume=resume)
        except (ConfigError, OSError, ValueError) as exc:
            raise RunFolderError(f"--out {path}: its config.yaml cannot be read ({exc})") from None
        if diff and resume:
            raise ConfigError(
                f"--resume: the config differs from {config} in {', '.join(diff)}; "
                "resume with the run's own config.yaml"
            )
        if diff:
            raise RunFolderError(
                f"--out {path} is the run folder of another config (it differs in "
                f"{', '.join(diff)}): choose another --out"
            )
    if resume and not has_ckpt:
        raise FileNotFoundError(no_ckpt)
    if not resume and has_ckpt:
        raise FileExistsError(
            f"{path} already holds a run (checkpoints/last): pass --resume to continue "
            "it, or choose another --out folder"
        )


def _gone(pid: str) -> str:
    """A note when the lock holder's ``pid`` has exited (a child it forked holds the lock)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, PermissionError):
        return ""
    except OSError:
        return ", which has exited: a process it started still holds the lock"
    return ""


@contextlib.contextmanager
def run_folder_lock(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run folder's exclusive lock (``flock`` on :data:`LOCK_NAME`) while inside.

    The holder's pid is written into the lock file. The operating system releases the lock
    when the holder exits or dies, so a lock is never stale. Not POSIX: no lock.

    Raises:
        RunFolderError: Another process holds the lock (names the folder and its pid).
    """
    path = Path(path)
    lock = path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise RunFolderError(
                    f"{path} is in use by another irkd process (pid {holder}"
                    f"{_gone(holder)}): one process writes a run folder at a time; wait for "
                    "it or stop it"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield lock
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # still held: no reader sees a pid that has gone
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- the run

Forward = Callable[[np.ndarray], np.ndarray]
"""A numpy -> numpy logits callable, ``(1, 1, H, W)`` float32 in and out."""


class Trainer(Protocol):
    """What :func:`run_training` needs from a backend (``TorchTrainer``, ``MSTrainer``).

    Attributes:
        backend: Backend name written to the log, the checkpoint state and the best
            weights' metadata (``pytorch``, ``mindspore``).
        cfg: The experiment.
        student_kwargs: The student's constructor kwargs (stored with the best weights).
    """

    backend: str
    cfg: ExperimentConfig
    student_kwargs: dict[str, Any]

    def train_mode(self) -> None:
        """Student and distiller in train mode (the teacher stays in eval mode)."""
        ...

    def step(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        step: int,
        lr: float,
        *,
        where: str,
        last_good: Path | None = None,
    ) -> dict[str, float]:
        """One optimizer step at ``lr``; returns ``loss`` and its terms as floats.

        Raises:
            NonFiniteLossError: A NaN/Inf loss or term (no parameter is updated).
        """
        ...

    def write(self, folder: Path) -> None:
        """Store the checkpoint files (weights, optimizer state, weight average) in ``folder``."""
        ...

    def read(self, folder: Path) -> None:
        """Restore what :meth:`write` stored."""
        ...

    def eval_forward(self) -> Forward:
        """The current student, put in eval mode, as a logits :data:`Forward`.

        With ``train.ema`` > 0: the student's weight average instead of the raw student.
        """
        ...

    def save_best(self, path: Path, metadata: dict[str, Any]) -> None:
        """Save the student's weights (neutral names) with ``metadata`` to ``path``.

        With ``train.ema`` > 0: the student's weight average (what :meth:`eval_forward` runs).
        """
        ...

    def bare_forward(self, path: Path) -> Forward:
        """A fresh student loaded from the weights file ``path``, as a :data:`Forward`."""
        ...

    def run_info(self) -> dict[str, Any]:
        """Execution facts for the ``start`` log record: ``threads`` and ``device``."""
        ...


def restore_checkpoint(
    rd: RunDir,
    trainer: Trainer,
    *,
    say: Callable[[str], None] = lambda s: None,
    move_broken: bool = True,
) -> tuple[TrainState, Path]:
    """Load the newest readable checkpoint into ``trainer``; return its state and folder.

    ``checkpoints/last`` first, then the kept ``checkpoints/epoch_NNNN`` (``train.keep_last``
    > 1), newest first. A checkpoint that cannot be read (a truncated ``state.json``, a
    corrupt weights or optimizer file) is skipped with a message; once an older one loads,
    the skipped ones are moved aside (``move_broken``) to ``checkpoints/broken-<name>-<time>``
    (kept, never deleted; the next checkpoint would otherwise treat one as the run's latest).
    A config that does not fit a readable checkpoint (``ConfigError``) is raised as it is.

    Raises:
        FileNotFoundError: No checkpoint at all.
        RunFolderError: No checkpoint can be read (each one's reason named).
    """
    kept = sorted(rd.checkpoints.glob("epoch_[0-9][0-9][0-9][0-9]"), reverse=True)
    candidates = ([rd.last] if rd.last.is_dir() else []) + kept
    if not candidates:
        rd.read_state()  # raises FileNotFoundError naming the folder
    broken: list[tuple[Path, str]] = []
    for folder in candidates:
        try:
            data = json.loads((folder / RunDir.STATE).read_text(encoding="utf-8"))
            state = TrainState.from_json(data)
            trainer.read(folder)
        except ConfigError:
            raise  # the checkpoint is fine, the config does not fit it (e.g. train.ema)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: try the next one
            text = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {text}"[:160]
            broken.append((folder, reason))
            say(f"checkpoint {folder} cannot be read ({reason}); trying an older one")
            continue
        for bad, _ in broken if move_broken else []:
            aside = rd.checkpoints / f"broken-{bad.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            with contextlib.suppress(OSError):
                bad.rename(aside)
                say(f"moved {bad} aside to {aside} (kept, not deleted)")
        if broken:
            say(f"resuming from {folder} (epoch {state.epoch}) instead of the unreadable one")
        return state, folder
    shown = "; ".join(f"{f.name} ({r})" for f, r in broken)
    raise RunFolderError(
        f"--resume: no checkpoint in {rd.checkpoints} can be read: {shown}; "
        "start a fresh run in another --out folder"
    )


def run_training(
    cfg: ExperimentConfig,
    run_dir: str | os.PathLike[str],
    make_trainer: Callable[[], Trainer],
    *,
    resume: bool = False,
    cache_dir: str | os.PathLike[str] = "runs/_data",
    synth_size: int = 256,
    stop_after: int | None = None,
    quiet: bool = False,
    world: World | None = None,
) -> dict[str, Any]:
    """Train (or distill) with a backend's trainer and report on the test split.

    The whole run around the train step: run folder, resume checks, data, epochs
    (:func:`run_epoch`), progress bars, log records and the final report
    (:func:`final_report`).

    Args:
        cfg: The experiment.
        run_dir: The run folder: new, empty or a run folder of this config
            (:func:`check_run_folder`); created, marked (:data:`RUN_MARKER`) and locked for
            the whole run (:func:`run_folder_lock`).
        make_trainer: Builds the trainer; called once, after the run folder checks and
            the data preparation.
        resume: Continue from ``run_dir/checkpoints/last`` (the next epoch after it).
        cache_dir: Where the synthetic dataset is generated when ``data.root`` is None.
        synth_size: Image side of the synthetic dataset.
        stop_after: Stop once this many epochs are complete, without the final report.
            None: run to ``schedule.epochs``.
        quiet: Print nothing.
        world: The processes of a data-parallel run (:class:`irkd.dist.World`; None: one
            process). Rank 0 does all of the above; every other rank waits at
            ``world.barrier()`` until rank 0 has checked the run folder and prepared the data,
            then trains on its shard of each batch (:class:`irkd.dist.ShardedBatches`) and
            writes nothing.

    Returns:
        ``{"run_dir", "state", "best_epoch", "best_val", "metrics", "last", "wall_s"}``
        (``metrics``: the test figures of the best-on-validation weights, ``last``: those of
        the last epoch's weights, both None when stopped early; ``wall_s``: the run's wall
        seconds so far, summed over resumed segments).

    Raises:
        NonFiniteLossError: A NaN/Inf loss; the last good checkpoint is left untouched.
        FileExistsError: ``run_dir`` already holds a run and ``resume`` is False.
        RunFolderError: ``run_dir`` is not a folder irkd may write (someone else's, another
            config's) or another process is writing it; nothing was written.
        ConfigError: On resume, a different config or number of steps per epoch.
    """
    t_start = time.perf_counter()
    path = Path(run_dir)

    def run(*, quiet: bool) -> dict[str, Any]:
        return _run_locked(
            cfg,
            RunDir(path),
            make_trainer,
            resume=resume,
            cache_dir=cache_dir,
            synth_size=synth_size,
            stop_after=stop_after,
            quiet=quiet,
            t_start=t_start,
            world=world,
        )

    if world is not None and not world.is_main:
        world.barrier()  # rank 0 has checked the run folder and prepared the data
        return run(quiet=True)
    # Nothing is written or deleted before the folder is known to be ours (or new).
    check_run_folder(path, cfg, resume=resume)
    existed = path.exists()
    created = not existed or not any(not _own_leftover(p.name) for p in path.iterdir())
    path.mkdir(parents=True, exist_ok=True)
    try:
        with run_folder_lock(path):
            check_run_folder(path, cfg, resume=resume)  # again: another process may have run
            for left in path.glob(f"{RUN_MARKER}.*.tmp"):  # a killed marker write
                left.unlink()
            if not (path / RUN_MARKER).is_file():
                write_text_atomic(
                    path / RUN_MARKER,
                    "irkd run folder: irkd train/distill write here, one process at a time\n",
                )
            return run(quiet=quiet)
    except Exception:
        if created and not (path / "log.jsonl").exists():
            _remove_unstarted(path, keep_folder=existed)  # failed before it started
        raise


def _remove_unstarted(path: Path, *, keep_folder: bool) -> None:
    """Undo what :func:`run_training` wrote in a new or empty folder before it failed to start.

    Only the files it writes before the first log record (the marker, the lock,
    ``config.yaml``, an empty ``checkpoints/``) are removed, and the folder itself only when
    this run created it (``keep_folder`` False) and that empties it.
    """
    for name in (RUN_MARKER, LOCK_NAME, "config.yaml"):
        with contextlib.suppress(OSError):
            (path / name).unlink()
    with contextlib.suppress(OSError):
        (path / "checkpoints").rmdir()
    if not keep_folder:
        with contextlib.suppress(OSError):
            path.rmdir()


def _run_locked(
    cfg: ExperimentConfig,
    rd: RunDir,
    make_trainer: Callable[[], Trainer],
    *,
    resume: bool,
    cache_dir: str | os.PathLike[str],
    synth_size: int,
    stop_after: int | None,
    quiet: bool,
    t_start: float,
    world: World | None = None,
) -> dict[str, Any]:
    """:func:`run_training` in a checked run folder whose lock it holds (rank 0), or as a
    data-parallel rank > 0 (``world``), which reads the run folder and writes nothing.
    """  # noqa: D205
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    wall_before = 0.0
    state = TrainState()
    main = world is None or world.is_main
    changes = resume_changes(rd.config, cfg) if resume else {}

    data = prepare_data(cfg, cache_dir, synth_size=synth_size)
    if world is not None and world.parallel:
        if main:
            world.barrier()  # the other ranks read the run folder and the data from here on
        data.batches = ShardedBatches(data.batches, world.rank, world.size)  # type: ignore[assignment]
    spe = steps_per_epoch(data.batches, cfg.schedule)
    trainer = make_trainer()
    if resume:
        state, folder = restore_checkpoint(rd, trainer, say=say, move_broken=main)
        wall_before = rd.read_wall_s(folder)
        saved_spe = state.extra.get("steps_per_epoch")
        if saved_spe is not None and int(saved_spe) != spe:
            raise ConfigError(
                f"--resume: {spe} steps per epoch now, {saved_spe} when the checkpoint was "
                "written (the data or batch size changed)"
            )
        if main:
            rd.trim_log(state.epoch)
        say(f"resuming {rd.path} after epoch {state.epoch} (step {state.step})")
    if main:  # only now: a run that cannot start leaves no config behind
        rd.save_config(cfg)

    def wall() -> float:
        # Time lost after the last checkpoint of an interrupted segment is not counted.
        return wall_before + time.perf_counter() - t_start

    epochs = cfg.schedule.epochs
    last_epoch = epochs if stop_after is None else min(epochs, stop_after)
    mode = f"distill {cfg.method.name}" if is_distill(cfg) else "train"
    # A fresh run starts log.jsonl anew (records of a run that died before its first
    # checkpoint are not this run's); a resumed one keeps the records up to its checkpoint.
    logger = rd.logger(fresh=not resume) if main else contextlib.nullcontext(_NullLog())
    with logger as log:
        if changes:
            log.log({"kind": "resume", "after_epoch": state.epoch, "changed": changes})
            say("resumed with " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        if state.epoch == 0:
            log.log(
                {
                    "kind": "start",
                    "backend": trainer.backend,
                    "mode": mode,
                    "student": cfg.model.name,
                    "teacher": cfg.teacher.name if is_distill(cfg) and cfg.teacher else None,
                    "steps_per_epoch": spe,
                    "data": data.info(),
                    **trainer.run_info(),
                }
            )
        bar = progress(total=epochs, desc=f"{cfg.name} [{mode}]", initial=state.epoch, unit="ep")
        try:
            while state.epoch < last_epoch:
                run_epoch(trainer, data, rd, log, state, spe, wall=wall, world=world)
                bar.update(1)
                if state.best_score is not None:
                    bar.set_postfix(best_iou=f"{state.best_score:.4f}", ep=state.best_epoch)
        finally:
            bar.close()

    result: dict[str, Any] = {
        "run_dir": str(rd.path),
        "state": state.to_json(),
        "best_epoch": state.best_epoch,
        "best_val": state.best_score,
        "metrics": None,
        "last": None,
        "wall_s": None,
    }
    if state.epoch < epochs:
        result["wall_s"] = wall()
        say(f"stopped after epoch {state.epoch}/{epochs}; continue with --resume")
        return result
    if not main:  # rank 0 evaluates and writes the test report
        return result
    report = final_report(rd, cfg, data, trainer.bare_forward(rd.best), write=False)
    report.update(last_report(trainer, rd, data, state, report))
    report["wall_s"] = wall()
    write_json_atomic(rd.metrics, report)
    result["metrics"] = summary_metrics(report)
    result["last"] = report["last"]
    result["wall_s"] = report["wall_s"]
    val = "n/a" if state.best_score is None else f"{100 * state.best_score:.2f}%"
    say(f"best epoch {report['best_epoch']} (val IoU {val}); test metrics in {rd.metrics}")
    return result


def run_epoch(
    trainer: Trainer,
    data: PreparedData,
    rd: RunDir,
    log: JsonlLogger,
    state: TrainState,
    spe: int,
    *,
    wall: Callable[[], float] | None = None,
    world: World | None = None,
) -> None:
    """Train one epoch, validate, keep the best, write the checkpoint; advance ``state``.

    Args:
        trainer: The backend's trainer.
        data: The prepared data.
        rd: The run folder.
        log: The run's logger.
        state: Where the run stands (updated in place).
        spe: Steps per epoch.
        wall: The run's wall seconds so far (over resumed segments), stored with the
            checkpoint (``timing.json``); None stores nothing.
        world: The processes of a data-parallel run (None: one process); only rank 0
            validates and writes, and images per second count every rank's images.
    """
    cfg = trainer.cfg
    main = world is None or world.is_main
    ranks = 1 if world is None else world.size
    e = state.epoch  # 0-based index of this epoch
    trainer.train_mode()
    t_epoch = time.perf_counter()
    t_window, n_window = t_epoch, 0
    sums: dict[str, float] = {}
    last_good = rd.last if rd.has_checkpoint() else None
    steps = progress(total=spe, desc=f"epoch {e + 1}", leave=False, unit="step")
    try:
        for i, (images, masks) in enumerate(data.batches.epoch(e)):
            if i >= spe:
                break
            lr = lr_at(state.step, spe, cfg.optim, cfg.schedule)
            values = trainer.step(
                images,
                masks,
                state.step,
                lr,
                where=f"epoch {e + 1}, step {state.step + 1}",
                last_good=last_good,
            )
            state.step += 1
            n_window += images.shape[0] * ranks
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            steps.update(1)
            steps.set_postfix(loss=f"{values['loss']:.4f}")
            if state.step % cfg.train.log_every == 0:
                now = time.perf_counter()
                log.log(
                    {
                        "kind": "train",
                        "epoch": e + 1,
                        "step": state.step,
                        "lr": lr,
                        **values,
                        "images_per_s": n_window / max(now - t_window, 1e-9),
                    }
                )
                t_window, n_window = now, 0
    finally:
        steps.close()
    train_s = time.perf_counter() - t_epoch
    means = {k: v / spe for k, v in sums.items()}
    log.log(
        {
            "kind": "epoch",
            "epoch": e + 1,
            "step": state.step,
            **{f"mean_{k}": v for k, v in means.items()},
            "train_s": train_s,
            "images_per_s": spe * cfg.data.batch_size / max(train_s, 1e-9),
        }
    )

    epochs = cfg.schedule.epochs
    if main and ((e + 1) % cfg.train.eval_every == 0 or e + 1 == epochs):
        if data.val_ids:
            metrics = validate(
                trainer,
                data,
                where=f"validation after epoch {e + 1}, step {state.step}",
                terms=means,
                last_good=last_good,
            )
            score = metrics["iou"]
            score = None if score is None or not math.isfinite(score) else float(score)
        else:  # no validation part: the latest weights are the best
            metrics, score = {}, None
        log.log({"kind": "val", "epoch": e + 1, "step": state.step, **summary_metrics(metrics)})
        better = (
            not data.val_ids
            or state.best_score is None
            or (score is not None and score > state.best_score)
        )
        if better:
            state.best_score = score if score is not None else state.best_score
            state.best_epoch = e + 1
            trainer.save_best(rd.best, weights_metadata(trainer, data, epoch=e + 1, val_iou=score))
            write_json_atomic(
                rd.best_json,
                {
                    "epoch": e + 1,
                    "step": state.step,
                    "score": "val_iou",
                    "val_ids": len(data.val_ids),
                    "val": summary_metrics(metrics) if metrics else None,
                    "note": None if data.val_ids else "no validation ids: best = latest epoch",
                },
            )
        trainer.train_mode()

    state.epoch = e + 1
    state.extra = {
        "backend": trainer.backend,
        "steps_per_epoch": spe,
        "data": {"next_epoch": state.epoch, "seed": cfg.seed, "rng": "default_rng([seed, epoch])"},
    }
    if not main:
        return
    rd.write_checkpoint(
        state,
        trainer.write,
        keep_last=cfg.train.keep_last,
        wall_s=None if wall is None else wall(),
    )


def validate(
    trainer: Trainer,
    data: PreparedData,
    *,
    where: str = "validation",
    terms: Mapping[str, float] | None = None,
    last_good: Path | None = None,
) -> dict[str, Any]:
    """Score the current student on the validation part (``IRSTDMetrics.compute()``).

    Args:
        trainer: The backend's trainer.
        data: The prepared data.
        where: Position named if the student's outputs are not finite (``epoch 3, step 120``).
        terms: The epoch's mean loss terms, shown in that message.
        last_good: The last checkpoint written, named in that message.

    Raises:
        NonFiniteLossError: The student's outputs hold NaN/Inf: its weights diverged even
            though every loss stayed finite (names the epoch, step, terms and likely cause).
    """
    forward = trainer.eval_forward()
    cfg = trainer.cfg

    def checked(x: np.ndarray) -> np.ndarray:
        out = forward(x)
        if not np.isfinite(out).all():
            shown = ", ".join(f"{k}={v:.6g}" for k, v in (terms or {}).items()) or "n/a"
            kept = (
                f"last good checkpoint: {last_good} (kept; --resume restarts from it)"
                if last_good is not None and last_good.is_dir()
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"the run diverged: at {where} the student's outputs hold NaN/Inf although "
                f"every loss stayed finite (mean loss terms of the epoch: {shown}); the weights "
                f"overflowed, most likely because optim.lr {cfg.optim.lr:g} is too high for "
                f"this network and batch: lower optim.lr, or raise schedule.warmup_epochs; "
                f"{kept}"
            )
        return out

    preds = predict_split(
        data.val_set,
        checked,
        mean=data.mean,
        std=data.std,
        multiple=data.multiple,
        desc="val",
    )
    return evaluate_predictions(preds)["metrics"]


def weights_metadata(trainer: Trainer, data: PreparedData, **extra: Any) -> dict[str, Any]:
    """Metadata stored with ``best.safetensors``: network kwargs, normalisation, run facts."""
    cfg = trainer.cfg
    return {
        "kwargs": trainer.student_kwargs,
        "mean": data.mean,
        "std": data.std,
        "eval_multiple": data.multiple,
        "data_root": str(data.root),
        "run": cfg.name,
        "method": cfg.method.name if is_distill(cfg) else "none",
        "teacher": cfg.teacher.name if is_distill(cfg) and cfg.teacher else None,
        "backend": trainer.backend,
        **({"ema": cfg.train.ema} if cfg.train.ema > 0 else {}),
        **extra,
    }


def test_metrics(data: PreparedData, forward: Forward) -> dict[str, Any]:
    """Score a :data:`Forward` on the TEST split (``{"metrics", "roc", "ids", "kept"}``)."""
    return evaluate_predictions(
        predict_split(
            data.test_set(),
            forward,
            mean=data.mean,
            std=data.std,
            multiple=data.multiple,
            desc="test",
        )
    )


def final_report(
    run: RunDir,
    cfg: ExperimentConfig,
    data: PreparedData,
    forward: Forward,
    *,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate the best weights on the TEST split and write ``metrics.json``.

    Args:
        run: The run folder (``best.json`` gives the best epoch).
        cfg: The experiment.
        data: The prepared data (test split, normalisation).
        forward: The bare student loaded from ``run.best`` (``Trainer.bare_forward``).
        write: Write ``metrics.json`` (False: only return the report, for a caller that
            adds to it and writes it once).

    Returns:
        The report written to ``metrics.json``.
    """
    result = test_metrics(data, forward)
    best = {}
    if run.best_json.is_file():
        best = json.loads(run.best_json.read_text())
    out = {
        "split": "test",
        "dataset": str(data.root),
        "weights": str(run.best),
        "network": cfg.model.name,
        "best_epoch": best.get("epoch"),
        **summary_metrics(result["metrics"]),
        "metrics": result["metrics"],
        "roc": result["roc"],
    }
    if write:
        write_json_atomic(run.metrics, out)
    return out


def last_report(
    trainer: Trainer,
    run: RunDir,
    data: PreparedData,
    state: TrainState,
    best_report: Mapping[str, Any],
) -> dict[str, Any]:
    """Save the last epoch's weights (``last.safetensors``) and score them on the TEST split.

    Called once the run is complete, with the trainer holding the last epoch's weights (the
    ones of ``checkpoints/last``). When the best epoch is the last one the weights are the
    same and the best report's figures are reused instead of a second evaluation.

    Args:
        trainer: The backend's trainer (its current student is saved).
        run: The run folder.
        data: The prepared data.
        state: The final state (``epoch``: the last epoch, ``best_score``).
        best_report: The report of the best weights (:func:`final_report`).

    Returns:
        ``{"best_val", "last_epoch", "last"}`` to add to ``metrics.json`` (``last``: the
        summary figures, as :func:`summary_metrics`).
    """
    trainer.save_best(
        run.last_weights, weights_metadata(trainer, data, epoch=state.epoch, weights="last")
    )
    if state.best_epoch == state.epoch and best_report.get("best_epoch") == state.epoch:
        last = summary_metrics(best_report)
    else:
        last = summary_metrics(
            test_metrics(data, trainer.bare_forward(run.last_weights))["metrics"]
        )
    return {"best_val": state.best_score, "last_epoch": state.epoch, "last": last}
