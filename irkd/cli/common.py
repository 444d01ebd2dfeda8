"""What the ``irkd`` subcommands share: exit codes, error lines, config loading.

Nothing here imports a framework.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from irkd.config import ExperimentConfig

__all__ = [
    "EXIT_OK",
    "EXIT_FAIL",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "Handler",
    "call_handler",
    "os_error_line",
    "load_cli_config",
    "say",
    "comma_list",
    "timestamp",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]

_OS_REASONS = {
    errno.EISDIR: "it is a folder, a file is expected there",
    errno.ENOTDIR: "a file stands where a folder is expected in that path",
    errno.EEXIST: "a file stands where a folder is expected",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ENOENT: "no such file or folder",
}


def call_handler(func: Handler, args: argparse.Namespace) -> int:
    """Run a subcommand's handler; turn a user's error into one line and an exit status.

    Input errors (dataset, config, files, paths) are the user's to fix: one line on stderr,
    no traceback, exit 1. Anything else is a bug and keeps its traceback.

    Args:
        func: The handler (``args.func``).
        args: The parsed arguments.

    Returns:
        The handler's exit status, 1 for a user's error, 130 when interrupted.
    """
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RuntimeError as exc:
        from irkd.engine import NonFiniteLossError
        from irkd.release import ReleaseError

        if not isinstance(exc, NonFiniteLossError | ReleaseError):
            raise
        # A NaN/Inf loss stops a run cleanly (the last good checkpoint kept); a failed release
        # step leaves no partial release: one line either way.
        print(f"irkd: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        # A path that cannot be read or written (read-only, a file where a folder is
        # expected, a folder where a file is expected, a full disk) is the user's to fix.
        print(f"irkd: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except ValueError as exc:
        print(f"irkd: error: {exc}", file=sys.stderr)
        return EXIT_FAIL


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path the user gave, and why.

    Errors raised by irkd itself (no ``errno``) already carry their own message. For a
    failed atomic write the path shown is the destination, not the temporary file.
    """
    if exc.errno is None:
        return str(exc)
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    if path is None:
        return f"{exc.strerror or exc}"
    name = os.fsdecode(path)
    base = os.path.basename(name)
    if base.startswith(".") and base.endswith(".tmp"):  # an atomic write's temporary file
        name = os.path.join(os.path.dirname(name), base[1:].rsplit(".", 2)[0])
    reason = _OS_REASONS.get(exc.errno, exc.strerror or "failed")
    return f"cannot use {name}: {reason}"


def _split_config_args(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """CONFIG is optional with --resume --out DIR; an item with '=' is an override."""
    items = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).is_file():
        items.insert(0, config)
        config = None
    if config is None:
        if not (args.resume and args.out):
            raise ValueError("a CONFIG file is needed (or --resume --out RUN_DIR)")
        config = str(Path(args.out) / "config.yaml")
    return Path(config), items


def load_cli_config(args: argparse.Namespace) -> tuple[Path, ExperimentConfig]:
    """The config file named by ``CONFIG [key=value ...]`` (or ``--resume --out RUN``), loaded.

    Args:
        args: Arguments with ``config``, ``overrides``, ``resume`` and ``out``.

    Returns:
        The config file's path and the config with the overrides applied.

    Raises:
        ValueError: No config file is given, or the file or an override is invalid.
    """
    from irkd.config import load_config

    config, items = _split_config_args(args)
    return config, load_config(config, items)


def say(line: str) -> None:
    """Print a progress line on stderr at once (stdout keeps the results)."""
    print(line, file=sys.stderr, flush=True)


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated option value."""
    return [s.strip() for s in text.split(",") if s.strip()]


def timestamp() -> str:
    """The local time as ``YYYYmmdd-HHMMSS``, for default output names."""
    return time.strftime("%Y%m%d-%H%M%S")
