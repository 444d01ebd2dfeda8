"""Dataset folders: split files, image/mask lookup and loading.

Two layouts are read:

- ``irkd``: ``images/<id>.png``, ``masks/<id>.png`` and ``<split>.txt`` in the root.
- ``basicirstd``: the same folders, with ``img_idx/<split>_<NAME>.txt`` where NAME is the
  root folder's name (any single ``img_idx/<split>_*.txt`` is accepted too).

Split files hold one id (file name without extension) a line; blank lines, surrounding
spaces, CRLF line ends and a UTF-8 BOM are tolerated.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irkd.data.errors import DatasetError
from irkd.data.io import read_gray, read_mask

__all__ = ["IMAGE_EXTENSIONS", "LAYOUTS", "IRSTDDataset", "Sample"]

IMAGE_EXTENSIONS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
LAYOUTS = ("auto", "irkd", "basicirstd")
_SHOWN = 5  # ids listed in an error message before "..."


@dataclass
class Sample:
    """One image and its mask.

    Attributes:
        id: Image id (file name without extension).
        image: uint8 grayscale, shape (H, W).
        mask: uint8 {0, 1}, shape (H, W), resized to the image if its file differs.

    """

    id: str
    image: np.ndarray
    mask: np.ndarray


def _preview(ids: Iterable[str], count: int) -> str:
    """Render the first few ids and the total, e.g. ``3 ids: a, b, c``."""
    shown = list(ids)[:_SHOWN]
    more = ", ..." if count > len(shown) else ""
    return f"{count} id{'s' if count != 1 else ''}: {', '.join(shown)}{more}"


def read_split_file(path: Path) -> list[str]:
    """Read the ids of a split file (one a line; blank lines and CRLF tolerated).

    Raises:
        DatasetError: The file is missing or unreadable.

    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"split file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read split file {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def find_split_file(root: Path, split: str, layout: str = "auto") -> tuple[Path, str]:
    """Locate the split file of ``split`` under ``root``.

    Args:
        root: Dataset root folder.
        split: Split name ("train", "test", ...).
        layout: "irkd", "basicirstd" or "auto" (irkd first, then basicirstd).

    Returns:
        The split file and the layout it belongs to ("irkd" or "basicirstd").

    Raises:
        DatasetError: No such file, several candidates, or an unknown layout.

    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not split or any(c in split for c in "/\\") or split.strip() != split:
        raise DatasetError(f"invalid split name {split!r}: use a plain name such as train, test")
    root = Path(root)
    irkd_file = root / f"{split}.txt"
    if layout in ("auto", "irkd") and irkd_file.is_file():
        return irkd_file, "irkd"
    idx = root / "img_idx"
    if layout in ("auto", "basicirstd"):
        exact = idx / f"{split}_{root.resolve().name}.txt"
        if exact.is_file():
            return exact, "basicirstd"
        found = sorted(idx.glob(f"{split}_*.txt")) if idx.is_dir() else []
        if len(found) == 1:
            return found[0], "basicirstd"
        if len(found) > 1:
            raise DatasetError(
                f"several split files for {split!r} in {idx}: {', '.join(p.name for p in found)}; "
                f"keep one, or name it {exact.name}"
            )
    missing = irkd_file if layout in ("auto", "irkd") else idx / f"{split}_<NAME>.txt"
    raise DatasetError(
        f"split file {missing} not found: expected {split}.txt in the dataset root "
        f"(irkd layout) or img_idx/{split}_<NAME>.txt (BasicIRSTD layout)"
    )


def index_folder(folder: Path) -> dict[str, Path]:
    """Map each image id in ``folder`` to its file, preferring .png over other extensions."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, Path]] = {}
    for path in folder.iterdir():
        r = rank.get(path.suffix.lower())
        if r is None or path.name.startswith(".") or not path.is_file():
            continue
        if path.stem not in best or r < best[path.stem][0]:
            best[path.stem] = (r, path)
    return {stem: p for stem, (_, p) in best.items()}


class IRSTDDataset:
    """The ids of one split of an IRSTD dataset folder, with lazy image loading.

    Construction checks that every id has an image and a mask file; decoding happens in
    ``__getitem__`` / :meth:`load`.

    Attributes:
        root: Dataset root folder.
        name: Root folder name (e.g. "NUDT-SIRST").
        split: Split name.
        layout: Resolved layout, "irkd" or "basicirstd".
        split_file: The split file read.
        ids: Ids of the split, in file order.

    """

    def __init__(self, root: str | os.PathLike[str], split: str, *, layout: str = "auto") -> None:
        """Open ``split`` of the dataset at ``root``.

        Raises:
            DatasetError: Missing root, split file or folders; empty split; duplicated ids;
                ids without an image or mask file.

        """
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset root {self.root} not found or not a folder: expected a folder "
                "holding images/, masks/ and train.txt/test.txt"
            )
        self.name = self.root.resolve().name
        self.split = split
        self.split_file, self.layout = find_split_file(self.root, split, layout)
        ids = read_split_file(self.split_file)
        if not ids:
            raise DatasetError(
                f"split file {self.split_file} lists no ids: write one image id "
                "(file name without extension) per line"
            )
        duplicated = [i for i, n in Counter(ids).items() if n > 1]
        if duplicated:
            raise DatasetError(
                f"split file {self.split_file} lists ids more than once "
                f"({_preview(duplicated, len(duplicated))}): keep each id once"
            )
        self._images = self._index("images")
        self._masks = self._index("masks")
        for kind, index in (("image", self._images), ("mask", self._masks)):
            missing = [i for i in ids if i not in index]
            if missing:
                folder = self.root / f"{kind}s"
                raise DatasetError(
                    f"{len(missing)} of the {len(ids)} ids of {self.split_file} have no {kind} "
                    f"file in {folder} ({_preview(missing, len(missing))}): add the files "
                    "or remove the ids from the split file"
                )
        self.ids: list[str] = ids

    def _index(self, sub: str) -> dict[str, Path]:
        folder = self.root / sub
        if not folder.is_dir():
            raise DatasetError(
                f"{sub} folder {folder} not found: the dataset needs {sub}/<id>.png "
                f"for every id of {self.split_file}"
            )
        return index_folder(folder)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        return self.load(self.ids[index])

    def __repr__(self) -> str:
        return (
            f"IRSTDDataset(root={str(self.root)!r}, split={self.split!r}, "
            f"layout={self.layout!r}, n={len(self.ids)})"
        )

    def image_path(self, id: str) -> Path:
        """Return the image file of ``id`` (.png preferred over .bmp/.jpg/.tif)."""
        try:
            return self._images[id]
        except KeyError:
            raise DatasetError(f"no image file for id {id!r} in {self.root / 'images'}") from None

    def mask_path(self, id: str) -> Path:
        """Return the mask file of ``id``."""
        try:
            return self._masks[id]
        except KeyError:
            raise DatasetError(f"no mask file for id {id!r} in {self.root / 'masks'}") from None

    def load(self, id: str) -> Sample:
        """Decode the image and mask of ``id`` (any id with files, not only the split's).

        A mask of another size than its image is resized with a ``MaskSizeWarning``.
        """
        image = read_gray(self.image_path(id))
        height, width = image.shape
        mask = read_mask(self.mask_path(id), (height, width))
        return Sample(id=id, image=image, mask=mask)
