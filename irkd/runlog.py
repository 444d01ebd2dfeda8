"""A run's log: JSON records, one a line (``log.jsonl``), echoed as short lines off a TTY."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from irkd.reports import to_jsonable

__all__ = ["JsonlLogger", "RecordLog", "echo_line", "read_jsonl"]


class RecordLog(Protocol):
    """Where a run's records go: a :class:`JsonlLogger`, or nowhere on ranks > 0."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Take one record."""


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
    out: list[dict[str, Any]] = []
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
