"""Child processes of a study: started to die with the study, stopped on a signal.

Every run is a subprocess whose output goes to a log file. On Linux it gets
``PR_SET_PDEATHSIG = SIGKILL`` (through ``prctl`` in ``preexec_fn``), so that a study killed
with SIGKILL takes its runs with it and a restarted study never races an orphan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["Child", "log_tail", "spawn", "stop_all", "wait_any"]

PR_SET_PDEATHSIG = 1


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded in the parent: the child only calls prctl after fork


def _die_with(parent: int) -> Callable[[], None]:
    """``preexec_fn``: the child gets SIGKILL when ``parent`` dies (Linux)."""

    def setup() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


@dataclass
class Child:
    """A running run.

    Attributes:
        key: The run id.
        proc: The process.
        log: Its output file (open).
        log_path: Path of ``log``.
        offset: Size of the log before this launch (the tail starts there).
        started: ``time.monotonic()`` at launch.
    """

    key: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path
    offset: int
    started: float


def spawn(key: str, cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> Child:
    """Start ``cmd`` with its stdout and stderr appended to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by stop_all or the caller
    offset = log.tell()
    log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(cmd)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            preexec_fn=_die_with(os.getpid()),
        )
    except BaseException:
        log.close()
        raise
    return Child(key, proc, log, log_path, offset, time.monotonic())


def wait_any(children: Mapping[str, Child], poll_s: float = 0.2) -> list[tuple[str, int]]:
    """Block until at least one child ends; return ``(key, exit code)`` of those that did."""
    while True:
        ended = [(k, c.proc.poll()) for k, c in children.items()]
        done = [(k, rc) for k, rc in ended if rc is not None]
        if done:
            return done
        time.sleep(poll_s)


def stop_all(children: dict[str, Child], grace_s: float = 15.0) -> None:
    """SIGTERM every child, SIGKILL those still alive after ``grace_s``; empties the dict."""
    for child in children.values():
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + grace_s
    for child in children.values():
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
        child.log.close()
    children.clear()


def log_tail(child: Child, lines: int = 12) -> list[str]:
    """The last ``lines`` lines this launch wrote to its log."""
    with open(child.log_path, "rb") as fh:
        fh.seek(child.offset)
        return fh.read().decode(errors="replace").splitlines()[-lines:]
