"""The run folder: its layout, state and checkpoints, and who may write it.

- :class:`RunDir`: the layout (``config.yaml``, ``log.jsonl``, ``checkpoints/last/``,
  ``best.safetensors``, ``best.json``, ``last.safetensors``, ``metrics.json``), with
  :meth:`RunDir.write_checkpoint` (atomic folder write, older ``last`` kept as
  ``checkpoints/epoch_NNNN`` up to ``keep_last``) and :meth:`RunDir.read_state`.
- :class:`TrainState`: ``epoch`` (completed epochs = index of the next epoch to run),
  ``step`` (global steps done), ``best_score``, ``best_epoch``; saved as ``state.json``.
- :func:`check_run_folder` and :func:`run_folder_lock`: a run folder is new, empty or marked
  (:data:`RUN_MARKER`, a study's :data:`STUDY_MARKER`, or an older run with a checkpoint)
  and of the same config, else :class:`RunFolderError`; one process writes it at a time
  (``flock``).
- :func:`resolved_config`, :func:`resume_changes`, :func:`check_same_config`: the run's
  saved config against the one a resume brings.
- :data:`EMA_FILE` and :func:`require_ema_file`: the weight average's checkpoint file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from irkd.config import ConfigError, ExperimentConfig, config_to_dict, load_config, save_config
from irkd.files import _recover_dir, atomic_dir, write_json_atomic, write_text_atomic
from irkd.reports import to_jsonable
from irkd.runlog import JsonlLogger, read_jsonl

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no run folder lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "EMA_FILE",
    "LOCK_NAME",
    "RUN_MARKER",
    "STUDY_MARKER",
    "RunDir",
    "RunFolderError",
    "TrainState",
    "check_run_folder",
    "check_same_config",
    "require_ema_file",
    "resolved_config",
    "resume_changes",
    "run_folder_lock",
    "run_signature",
]

RUN_MARKER = ".irkd-run"
"""Marker file of a run folder, written when ``irkd.engine.run_training`` takes the folder."""

STUDY_MARKER = ".irkd-study-run"
"""Marker of a run folder made by ``irkd study`` (``irkd.study.results.MARKER``)."""

LOCK_NAME = ".irkd-lock"
"""Lock file of a run folder (``flock``, held by the one process writing the folder)."""


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
        write_text_atomic(self.log, text)

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


def _resolved_root(root: str | None) -> str | None:
    """``data.root`` as an absolute path (None stays None: the synthetic dataset)."""
    return None if root is None else str(Path(root).expanduser().resolve())


def resolved_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``data.root`` absolute: a run folder's config.yaml resumes from anywhere."""
    root = _resolved_root(cfg.data.root)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def _weights_as_files(d: dict) -> None:
    """Replace, in a config dict, the starting and teacher weights' paths by real paths.

    A path is replaced by the real path of the file it leads to (through links), where it
    exists, so that two paths to one file compare equal.
    """
    for net in ("model", "teacher"):
        sec = d.get(net) or {}
        path = sec.get("checkpoint")
        if path and Path(path).expanduser().exists():
            sec["checkpoint"] = os.path.realpath(Path(path).expanduser())


def run_signature(cfg: ExperimentConfig) -> str:
    """What a run trains, as text: two configs with one signature train the same run.

    Every field but ``name``; ``data.root`` resolved; the starting and teacher weights
    (``model.checkpoint``, ``teacher.checkpoint``) as the real path of the file they lead
    to (through links), where it exists.
    """
    d = config_to_dict(cfg)
    d.pop("name", None)
    d["data"]["root"] = _resolved_root(d["data"]["root"])
    _weights_as_files(d)
    return json.dumps(d, sort_keys=True, default=str)


def _config_diff(saved_path: Path, cfg: ExperimentConfig, *, resume: bool = False) -> list[str]:
    """Top-level keys in which ``cfg`` differs from the config saved at ``saved_path``.

    ``schedule.epochs`` may differ (a run continued for longer); ``data.root`` is compared
    resolved, and may differ on resume (a moved dataset; :func:`resume_changes` records it).
    The starting and teacher weights (``model.checkpoint``, ``teacher.checkpoint``) are the
    same when both paths lead to one file (a run folder linked into another study).
    """
    saved = config_to_dict(load_config(saved_path))
    now = config_to_dict(cfg)
    saved["schedule"]["epochs"] = now["schedule"]["epochs"]
    _weights_as_files(saved)
    _weights_as_files(now)
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


def check_run_folder(
    path: str | os.PathLike[str], cfg: ExperimentConfig, *, resume: bool = False
) -> None:
    """Refuse a run folder that ``irkd.engine.run_training`` may not write (it only reads here).

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
