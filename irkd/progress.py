"""Progress bars: tqdm on stderr, silent when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

__all__ = ["progress"]


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
