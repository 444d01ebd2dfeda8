"""Fault injection for tests: kill this process at its k-th file-system step.

``arm(k, count_file)`` wraps the calls through which irkd makes files durable and visible
(``os.replace``, ``os.rename``, ``os.fsync``, ``os.unlink``, ``shutil.rmtree``). At the k-th
call the process ends at once with ``os._exit(137)``, as a SIGKILL would: no ``finally``
block, no atexit handler, no flush. ``k = 0`` never kills; the number of calls made is then
written to ``count_file`` at exit, so a test can place its kills over a whole run.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path
from typing import Any

_calls = [0]


def arm(k: int, count_file: str | os.PathLike[str] | None = None) -> None:
    """Kill the process at the ``k``-th wrapped call (1-based; 0: never)."""

    def wrap(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            _calls[0] += 1
            if _calls[0] == k:
                os._exit(137)
            return real(*args, **kwargs)

        setattr(owner, name, step)

    for name in ("replace", "rename", "fsync", "unlink"):
        wrap(os, name)
    wrap(shutil, "rmtree")
    if count_file is not None and k == 0:
        atexit.register(lambda: Path(count_file).write_text(str(_calls[0])))
