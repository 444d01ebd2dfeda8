"""Atomic file and folder writes, made durable with fsync: the one place irkd writes them.

A reader never sees a partial file or folder: everything is written under a temporary
name in the destination's folder, fsynced, then renamed into place. New files and folders
get the permissions a plain ``open``/``mkdir`` would give them under the umask.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from irkd.reports import to_jsonable

__all__ = [
    "atomic_dir",
    "atomic_path",
    "current_umask",
    "file_mode",
    "write_json_atomic",
    "write_text_atomic",
]


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows.

    Linux publishes it in ``/proc/self/status``; elsewhere it is read by setting and
    restoring it (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(base: int = 0o666) -> int:
    """Permissions a plain ``open(path, "w")`` would give a new file: ``base & ~umask``.

    ``tempfile.mkstemp`` creates 0o600 files and ``tempfile.mkdtemp`` 0o700 folders whatever
    the umask; an atomic writer that renames such a file into place must set this mode
    first, so that its results look like any other file the user creates (``0o644`` under
    the usual umask 022). Folders: ``file_mode(0o777)``.
    """
    return base & ~current_umask()


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, mode: int | None = None, keep_suffix: bool = True
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically.

    The temporary file lives in the same folder (so :func:`os.replace` is atomic). On
    success it is given its mode, fsynced and moved onto ``path``; on an exception it is
    removed and ``path`` is left as it was.

    Args:
        path: Final destination (its folder is created if missing).
        mode: Permissions of the file placed at ``path`` (None: those of any newly created
            file, ``0o666 & ~umask`` (:func:`file_mode`), not ``mkstemp``'s 0o600 or the
            0o400 of MindSpore's writers).
        keep_suffix: Name the temporary file ``.STEM.*.tmpSUFFIX``, keeping the suffix of
            ``path`` (MindSpore's ``save_checkpoint`` appends ``.ckpt`` otherwise); False:
            ``.NAME.*.tmp``.

    Yields:
        The temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_suffix:
        prefix, suffix = f".{path.stem}.", f".tmp{path.suffix}"
    else:
        prefix, suffix = f".{path.name}.", ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """Write text so that readers never see a partial file (:func:`atomic_path`).

    Args:
        path: Destination file (its folder is created if missing).
        text: The content (UTF-8).
        mode: File permissions (None: those of a newly created file under the current
            umask, :func:`file_mode`).

    Returns:
        The destination path.
    """
    dest = Path(path)
    with atomic_path(dest, mode=mode, keep_suffix=False) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON so that readers never see a partial file.

    See :func:`write_text_atomic`. Values are converted by ``to_jsonable`` (NaN -> null, numpy
    types -> Python types).

    Args:
        path: Destination file.
        obj: The object to write.
        indent: JSON indentation.

    Returns:
        The destination path.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


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
