"""Per-run files of a study: run status, launch facts, and the committed copy of a run.

A run folder (``runs/study/<study>/<id>/``, git-ignored) holds the weights and checkpoints;
:func:`sync_run` copies what is worth committing into ``results/<study>/runs/<id>/``:
``config.yaml``, ``metrics.json``, ``log_summary.json`` and ``run.json`` (no weights). Each
file is written atomically and only when its content changed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from irkd.files import write_text_atomic
from irkd.reports import to_jsonable
from irkd.runlog import read_jsonl

__all__ = [
    "LAUNCHES",
    "MARKER",
    "RunStatus",
    "git_facts",
    "launch_facts",
    "log_summary",
    "read_json",
    "run_status",
    "sync_run",
]

MARKER = ".irkd-study-run"
"""File put in every run folder the study creates (only those are ever cleared)."""

LAUNCHES = "study-run.json"
"""The launches of a run (time, resume, facts, exit code), in its run folder."""

SUMMARY_METRICS = ("iou", "niou", "pd", "fa_1e6")


@dataclass(frozen=True)
class RunStatus:
    """Where a run folder stands.

    Attributes:
        state: ``done`` (``metrics.json`` with ``last``), ``partial`` (a checkpoint) or
            ``pending``.
        epoch: Completed epochs of the checkpoint (partial).
        best_val: Best validation IoU (done).
    """

    state: str
    epoch: int = 0
    best_val: float | None = None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def done_metrics(folder: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a finished run (one with last-epoch figures), else None."""
    m = read_json(folder / "metrics.json")
    return m if m is not None and isinstance(m.get("last"), dict) else None


def run_status(run_dir: Path) -> RunStatus:
    """The status of a run folder (see :class:`RunStatus`)."""
    m = done_metrics(run_dir)
    if m is not None:
        val = m.get("best_val")
        return RunStatus("done", int(m.get("last_epoch") or 0), None if val is None else float(val))
    state = read_json(run_dir / "checkpoints" / "last" / "state.json")
    if state is not None:
        return RunStatus("partial", int(state.get("epoch", 0)))
    return RunStatus("pending")


# ----------------------------------------------------------------------------- facts


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_facts(repo: Path, exclude: Path | None = None) -> dict[str, Any]:
    """Revision of ``repo`` and whether its tracked files differ from it.

    Args:
        repo: The repository holding the code that runs.
        exclude: A folder inside it left out of the dirty check (the study's own results).

    Returns:
        ``{"revision": sha | None, "dirty": bool | None}``.
    """

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    if rev is None:
        return {"revision": None, "dirty": None}
    spec = ["--", "."]
    if exclude is not None:
        try:
            rel = exclude.resolve().relative_to(repo.resolve())
            spec.append(f":(exclude){rel.as_posix()}")
        except ValueError:
            pass
    status = git("status", "--porcelain", "--untracked-files=no", *spec)
    return {"revision": rev.strip(), "dirty": None if status is None else bool(status.strip())}


def launch_facts(backend: str, threads: int, git: Mapping[str, Any]) -> dict[str, Any]:
    """Machine, versions, threads and git facts of one launch of a run."""
    fw = {"pytorch": "torch", "mindspore": "mindspore"}.get(backend, backend)
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "nproc": os.cpu_count(),
        },
        "versions": {
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            fw: _version(fw),
            "irkd": _version("irkd"),
        },
        "python": sys.executable,
        "threads": threads,
        "git": dict(git),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------- summaries


def log_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per epoch: mean train loss terms and, when validated, val IoU/nIoU/Pd/Fa.

    Args:
        records: The run's ``log.jsonl`` records.

    Returns:
        ``{"epochs": [{"epoch", "step", "train": {term: mean}, "val": {...} | None}]}``.
    """
    epochs: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("epoch") is None or r.get("kind") not in ("epoch", "val"):
            continue
        e = int(r["epoch"])
        row = epochs.setdefault(e, {"epoch": e, "step": None, "train": {}, "val": None})
        if r["kind"] == "epoch":
            row["step"] = r.get("step")
            row["train"] = {k[5:]: v for k, v in r.items() if k.startswith("mean_")}
        else:
            row["val"] = {k: r.get(k) for k in SUMMARY_METRICS}
    return {"epochs": [epochs[e] for e in sorted(epochs)]}


def _dump(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    write_text_atomic(path, text)


def sync_run(
    run_dir: Path,
    dest: Path,
    *,
    info: Mapping[str, Any],
    command: str,
) -> bool:
    """Copy a finished run's committed files into ``dest`` (``results/<study>/runs/<id>``).

    Args:
        run_dir: The run folder (must be done).
        dest: The results folder of the run.
        info: Id, label, dataset, mode, backend, seed and roles of the run.
        command: A shell command line that reproduces the run.

    Returns:
        False when the run is not done (nothing written).
    """
    metrics = done_metrics(run_dir)
    if metrics is None:
        return False
    launches = (read_json(run_dir / LAUNCHES) or {}).get("launches") or []
    last = launches[-1] if launches else {}
    run = {
        **info,
        "wall_s": metrics.get("wall_s"),
        "command": command,
        "threads": last.get("threads"),
        "machine": last.get("machine"),
        "versions": last.get("versions"),
        "git": last.get("git"),
        "launches": [
            {k: lch.get(k) for k in ("started", "resume", "from_epoch", "seconds", "rc")}
            for lch in launches
        ],
    }
    _write_if_changed(dest / "config.yaml", portable_config(run_dir / "config.yaml"))
    _write_if_changed(dest / "metrics.json", _dump(metrics))
    _write_if_changed(
        dest / "log_summary.json", _dump(log_summary(read_jsonl(run_dir / "log.jsonl")))
    )
    _write_if_changed(dest / "run.json", _dump(run))
    return True


def portable_config(path: Path) -> str:
    """A run folder's config.yaml for the results: ``data.root`` relative to the current folder.

    A run folder stores ``data.root`` absolute (it must resume from anywhere); the committed
    copy names it from the folder the study runs in (the repository root), as the study's own
    configs do, so that the reproduce command works on another machine.
    """
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    root = (data.get("data") or {}).get("root") if isinstance(data, dict) else None
    if not isinstance(root, str) or not os.path.isabs(root):
        return text
    data["data"]["root"] = os.path.relpath(root, Path.cwd())
    return yaml.safe_dump(data, sort_keys=False)


def reproduce_command(mode: str, config: Path, out: Path, threads: int, backend: str) -> str:
    """The command line that reruns one run by hand (environment included)."""
    env = [f"IRKD_TORCH_THREADS={threads}", "OMP_WAIT_POLICY=PASSIVE", f"OMP_NUM_THREADS={threads}"]
    if backend == "mindspore":
        env.append("ONEDNN_MAX_CPU_ISA=AVX2")
    return shlex.join([*env, "irkd", mode, str(config), "--out", str(out)])
