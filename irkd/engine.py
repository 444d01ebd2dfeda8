"""The training loop, framework-free, around a backend's train step.

Why this module is long: the loop is one piece: :func:`run_training`, :func:`_run_locked`
and :func:`run_epoch` share the run's state, and the :class:`Trainer` protocol they drive is
documented next to them.

:func:`run_training` runs a whole run (run folder and resume checks, data, epochs, log
records, progress bars, test report) around a backend's :class:`Trainer` (the protocol
``torch_ref.train.TorchTrainer`` and ``ms_impl.train.MSTrainer`` follow). Its pieces:
:func:`restore_checkpoint`, :func:`run_epoch` (train, validate, keep the best, checkpoint),
:func:`validate`, :func:`weights_metadata`, :func:`final_report` (best weights on the TEST
split, ``metrics.json``) and :func:`last_report` (the last epoch's weights, saved as
``last.safetensors`` and scored on the TEST split: ``metrics.json["last"]``). A complete
``metrics.json`` also holds ``best_val``, ``last_epoch`` and ``wall_s`` (wall seconds of the
run, summed over resumed segments through ``checkpoints/last/timing.json``).

What the loop uses lives in its own modules: :mod:`irkd.data.prepare` (the data),
:mod:`irkd.schedule` (learning rate, EMA decay, noise), :mod:`irkd.rundir` (the run folder,
its state, checkpoints and lock), :mod:`irkd.runlog` (``log.jsonl``), :mod:`irkd.evaluate`
(scoring), :mod:`irkd.progress` and :mod:`irkd.files` (atomic writes).

Conventions: epochs are 0-based in code and in ``state.json`` (``TrainState.epoch`` counts
completed epochs); log records carry ``epoch`` 1-based (the epoch being run, as the
progress bar shows it) and ``step`` as the 1-based global step just finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from irkd.config import ConfigError, ExperimentConfig, NetConfig, is_distill
from irkd.data.prepare import PreparedData, prepare_data
from irkd.dist import ShardedBatches, World
from irkd.evaluate import (
    Forward,
    evaluate_predictions,
    predict_split,
    summary_metrics,
    test_metrics,
)
from irkd.files import write_json_atomic, write_text_atomic
from irkd.progress import progress
from irkd.rundir import (
    LOCK_NAME,
    RUN_MARKER,
    RunDir,
    RunFolderError,
    TrainState,
    _own_leftover,
    check_run_folder,
    resume_changes,
    run_folder_lock,
)
from irkd.runlog import RecordLog, _NullLog
from irkd.schedule import lr_at, steps_per_epoch
from irkd.zoo import get_spec

__all__ = [
    "NonFiniteLossError",
    "Trainer",
    "check_finite",
    "final_report",
    "last_report",
    "net_kwargs",
    "restore_checkpoint",
    "run_epoch",
    "run_training",
    "validate",
    "weights_metadata",
]


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
    rundir: RunDir,
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
    kept = sorted(rundir.checkpoints.glob("epoch_[0-9][0-9][0-9][0-9]"), reverse=True)
    candidates = ([rundir.last] if rundir.last.is_dir() else []) + kept
    if not candidates:
        rundir.read_state()  # raises FileNotFoundError naming the folder
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
            aside = rundir.checkpoints / f"broken-{bad.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            with contextlib.suppress(OSError):
                bad.rename(aside)
                say(f"moved {bad} aside to {aside} (kept, not deleted)")
        if broken:
            say(f"resuming from {folder} (epoch {state.epoch}) instead of the unreadable one")
        return state, folder
    shown = "; ".join(f"{f.name} ({r})" for f, r in broken)
    raise RunFolderError(
        f"--resume: no checkpoint in {rundir.checkpoints} can be read: {shown}; "
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
    rundir: RunDir,
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
    changes = resume_changes(rundir.config, cfg) if resume else {}

    data = prepare_data(cfg, cache_dir, synth_size=synth_size)
    if world is not None and world.parallel:
        if main:
            world.barrier()  # the other ranks read the run folder and the data from here on
        data.batches = ShardedBatches(data.batches, world.rank, world.size)  # type: ignore[assignment]
    epoch_steps = steps_per_epoch(data.batches, cfg.schedule)
    trainer = make_trainer()
    if resume:
        state, folder = restore_checkpoint(rundir, trainer, say=say, move_broken=main)
        wall_before = rundir.read_wall_s(folder)
        saved_epoch_steps = state.extra.get("steps_per_epoch")
        if saved_epoch_steps is not None and int(saved_epoch_steps) != epoch_steps:
            raise ConfigError(
                f"--resume: {epoch_steps} steps per epoch now, {saved_epoch_steps} when the "
                "checkpoint was written (the data or batch size changed)"
            )
        if main:
            rundir.trim_log(state.epoch)
        say(f"resuming {rundir.path} after epoch {state.epoch} (step {state.step})")
    if main:  # only now: a run that cannot start leaves no config behind
        rundir.save_config(cfg)

    def wall() -> float:
        # Time lost after the last checkpoint of an interrupted segment is not counted.
        return wall_before + time.perf_counter() - t_start

    epochs = cfg.schedule.epochs
    last_epoch = epochs if stop_after is None else min(epochs, stop_after)
    mode = f"distill {cfg.method.name}" if is_distill(cfg) else "train"
    # A fresh run starts log.jsonl anew (records of a run that died before its first
    # checkpoint are not this run's); a resumed one keeps the records up to its checkpoint.
    logger = rundir.logger(fresh=not resume) if main else contextlib.nullcontext(_NullLog())
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
                    "steps_per_epoch": epoch_steps,
                    "data": data.info(),
                    **trainer.run_info(),
                }
            )
        bar = progress(total=epochs, desc=f"{cfg.name} [{mode}]", initial=state.epoch, unit="ep")
        try:
            while state.epoch < last_epoch:
                run_epoch(trainer, data, rundir, log, state, epoch_steps, wall=wall, world=world)
                bar.update(1)
                if state.best_score is not None:
                    bar.set_postfix(best_iou=f"{state.best_score:.4f}", ep=state.best_epoch)
        finally:
            bar.close()

    result: dict[str, Any] = {
        "run_dir": str(rundir.path),
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
    report = final_report(rundir, cfg, data, trainer.bare_forward(rundir.best), write=False)
    report.update(last_report(trainer, rundir, data, state, report))
    report["wall_s"] = wall()
    write_json_atomic(rundir.metrics, report)
    result["metrics"] = summary_metrics(report)
    result["last"] = report["last"]
    result["wall_s"] = report["wall_s"]
    val = "n/a" if state.best_score is None else f"{100 * state.best_score:.2f}%"
    say(f"best epoch {report['best_epoch']} (val IoU {val}); test metrics in {rundir.metrics}")
    return result


def run_epoch(
    trainer: Trainer,
    data: PreparedData,
    rundir: RunDir,
    log: RecordLog,
    state: TrainState,
    epoch_steps: int,
    *,
    wall: Callable[[], float] | None = None,
    world: World | None = None,
) -> None:
    """Train one epoch, validate, keep the best, write the checkpoint; advance ``state``.

    Args:
        trainer: The backend's trainer.
        data: The prepared data.
        rundir: The run folder.
        log: The run's logger.
        state: Where the run stands (updated in place).
        epoch_steps: Steps per epoch.
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
    last_good = rundir.last if rundir.has_checkpoint() else None
    steps = progress(total=epoch_steps, desc=f"epoch {e + 1}", leave=False, unit="step")
    try:
        for i, (images, masks) in enumerate(data.batches.epoch(e)):
            if i >= epoch_steps:
                break
            lr = lr_at(state.step, epoch_steps, cfg.optim, cfg.schedule)
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
    means = {k: v / epoch_steps for k, v in sums.items()}
    log.log(
        {
            "kind": "epoch",
            "epoch": e + 1,
            "step": state.step,
            **{f"mean_{k}": v for k, v in means.items()},
            "train_s": train_s,
            "images_per_s": epoch_steps * cfg.data.batch_size / max(train_s, 1e-9),
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
            trainer.save_best(
                rundir.best, weights_metadata(trainer, data, epoch=e + 1, val_iou=score)
            )
            write_json_atomic(
                rundir.best_json,
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
        "steps_per_epoch": epoch_steps,
        "data": {"next_epoch": state.epoch, "seed": cfg.seed, "rng": "default_rng([seed, epoch])"},
    }
    if not main:
        return
    rundir.write_checkpoint(
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
