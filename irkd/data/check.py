"""Whole-folder dataset check that reports every problem at once."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from irkd.data.dataset import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    find_split_file,
    read_split_file,
)
from irkd.data.errors import DatasetError
from irkd.data.io import _binarise_mask, _decode, _resize_nearest, _to_gray_u8

__all__ = ["AREA_BINS", "DatasetReport", "check_dataset", "format_report"]

#: Target area bins (pixels): (label, lowest area, highest area).
AREA_BINS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2-4", 2, 4),
    ("5-9", 5, 9),
    ("10-25", 10, 25),
    ("26-100", 26, 100),
    ("101-400", 101, 400),
    (">400", 401, float("inf")),
)
_SHOWN = 5
_OPTIONAL_SPLITS = ("val",)
_REQUIRED_SPLITS = ("train", "test")


@dataclass
class DatasetReport:
    """Everything :func:`check_dataset` found.

    Attributes:
        root: Dataset root.
        layout: Resolved layout ("irkd", "basicirstd") or the requested one if unresolved.
        n_images: Image files in images/.
        n_masks: Mask files in masks/.
        splits: Ids per split file found.
        errors: Problems that make the dataset unusable as it is.
        warnings: Problems that loading works around (resized masks, unused files, ...).
        n_decoded: Images decoded successfully.
        n_sizes: Distinct image sizes.
        height_range: (min, max) image height, None when no image was decoded.
        width_range: (min, max) image width.
        modes: Image files per pixel mode ("L", "RGB", "RGBA", "P", "LA", ";16" = 16-bit).
        targets_per_image: Number of images per number of targets (8-connected components).
        target_areas: Number of targets per area bin (labels of ``AREA_BINS``).
        n_targets: Targets in all masks.
        n_empty: Images whose mask has no target.
        split_targets: Targets per split (ids whose mask was read); a split with none is
            also a warning (training on it, or scoring it, measures nothing).
        seconds: Duration of the check.

    """

    root: Path
    layout: str
    n_images: int = 0
    n_masks: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_decoded: int = 0
    n_sizes: int = 0
    height_range: tuple[int, int] | None = None
    width_range: tuple[int, int] | None = None
    modes: dict[str, int] = field(default_factory=dict)
    targets_per_image: dict[int, int] = field(default_factory=dict)
    target_areas: dict[str, int] = field(default_factory=lambda: {b[0]: 0 for b in AREA_BINS})
    n_targets: int = 0
    n_empty: int = 0
    split_targets: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (paths and keys as strings), plus ``ok``."""
        out = asdict(self)
        out["root"] = str(self.root)
        out["targets_per_image"] = {str(k): v for k, v in self.targets_per_image.items()}
        for key in ("height_range", "width_range"):
            out[key] = list(out[key]) if out[key] is not None else None
        out["ok"] = self.ok
        return out


@dataclass
class _PairResult:
    """What one image/mask pair yielded (computed in a worker thread)."""

    id: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, int] | None = None
    mode: str | None = None
    areas: list[int] | None = None
    nonbinary: bool = False


def _preview(items: Iterable[str], count: int) -> str:
    shown = list(items)[:_SHOWN]
    return ", ".join(shown) + (", ..." if count > len(shown) else "")


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _check_pair(id_: str, image_path: Path | None, mask_path: Path | None) -> _PairResult:
    """Decode one image and its mask; never raises."""
    res = _PairResult(id_)
    if image_path is not None:
        try:
            array, res.mode = _decode(image_path, "image")
            height, width = _to_gray_u8(array, image_path).shape
            res.shape = (height, width)
        except DatasetError as exc:
            res.errors.append(str(exc))
    if mask_path is None:
        return res
    try:
        raw, _ = _decode(mask_path, "mask")
    except DatasetError as exc:
        res.errors.append(str(exc))
        return res
    if raw.dtype in (np.uint8, np.uint16) and raw.ndim == 2:
        used = set(np.unique(raw).tolist())
        res.nonbinary = not any(used <= {0, top} for top in (1, 255, 65535))
    mask = _binarise_mask(raw)
    if res.shape is not None and mask.shape != res.shape:
        (mh, mw), (ih, iw) = mask.shape, res.shape
        res.warnings.append(
            f"mask {mask_path} is {mw}x{mh} (WxH) but its image is {iw}x{ih}: "
            "it is resized nearest-neighbour when loading; fix the file to silence this"
        )
        mask = _resize_nearest(mask, res.shape)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    res.areas = stats[1:n, cv2.CC_STAT_AREA].astype(int).tolist()
    return res


def _index(folder: Path, report: DatasetReport, kind: str) -> dict[str, Path]:
    """List image files of ``folder``, recording odd files as warnings."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[str, list[Path]] = {}
    others: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in rank and path.is_file():
            found.setdefault(path.stem, []).append(path)
        else:
            others.append(path.name)
    if others:
        report.warnings.append(
            f"not image files, ignored ({len(others)} in {folder}): {_preview(others, len(others))}"
        )
    index = {}
    for stem, paths in found.items():
        paths.sort(key=lambda p: rank[p.suffix.lower()])
        index[stem] = paths[0]
        if len(paths) > 1:
            report.warnings.append(
                f"{kind} id {stem} has several files in {folder} "
                f"({', '.join(p.name for p in paths)}): {paths[0].name} is used"
            )
    return index


def _resolve_splits(root: Path, layout: str, report: DatasetReport) -> dict[str, list[str]]:
    """Find and read the split files, recording problems."""
    if layout == "auto":
        if any((root / f"{s}.txt").is_file() for s in _REQUIRED_SPLITS + _OPTIONAL_SPLITS):
            layout = "irkd"
        elif (root / "img_idx").is_dir() and any((root / "img_idx").glob("*_*.txt")):
            layout = "basicirstd"
        else:
            report.errors.append(
                f"no split files in {root}: expected train.txt/test.txt in the dataset root "
                "(irkd layout) or img_idx/train_<NAME>.txt (BasicIRSTD layout)"
            )
            return {}
    report.layout = layout
    splits: dict[str, list[str]] = {}
    for split in _REQUIRED_SPLITS + _OPTIONAL_SPLITS:
        try:
            path, _ = find_split_file(root, split, layout)
            ids = read_split_file(path)
        except DatasetError as exc:
            if split in _REQUIRED_SPLITS:
                report.errors.append(str(exc))
            continue
        splits[split] = ids
        report.splits[split] = len(ids)
        if not ids:
            report.errors.append(f"split file {path} lists no ids: write one id per line")
        dup = [i for i, n in Counter(ids).items() if n > 1]
        if dup:
            report.errors.append(
                f"split file {path} lists {len(dup)} ids more than once "
                f"({_preview(dup, len(dup))}): keep each id once"
            )
    return splits


def check_dataset(root: str | Path, *, layout: str = "auto") -> DatasetReport:
    """Check a dataset folder completely and report all problems found.

    Checked: split files (present, non-empty, no duplicates, train/test/val disjoint),
    images/ and masks/ (present; every split id has both; files used by no split);
    every file decodes; mask size equals image size (a warning each: loading resizes);
    mask values are binary. Also gathers image sizes, pixel modes and target statistics
    (8-connected components of the masks).

    Args:
        root: Dataset root folder.
        layout: "auto", "irkd" or "basicirstd".

    Returns:
        The report; ``report.ok`` is False when there are errors.

    Raises:
        DatasetError: ``root`` is not a folder or ``layout`` is unknown (nothing to check).

    """
    start = time.perf_counter()
    root = Path(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} not found or not a folder: expected a folder holding "
            "images/, masks/ and train.txt/test.txt"
        )
    report = DatasetReport(root=root, layout=layout)

    splits = _resolve_splits(root, layout, report)
    indexes: dict[str, dict[str, Path]] = {}
    for sub in ("images", "masks"):
        folder = root / sub
        if folder.is_dir():
            indexes[sub] = _index(folder, report, sub[:-1])
        else:
            indexes[sub] = {}
            report.errors.append(f"{sub} folder {folder} not found: expected {sub}/<id>.png")
    images, masks = indexes["images"], indexes["masks"]
    report.n_images, report.n_masks = len(images), len(masks)

    for split, ids in splits.items():
        for kind, article, index in (("image", "an", images), ("mask", "a", masks)):
            if not (root / f"{kind}s").is_dir():
                continue
            missing = [i for i in ids if i not in index]
            if missing:
                report.errors.append(
                    f"split {split!r}: {_count(len(missing), 'id')} without {article} {kind} "
                    f"file in {root / (kind + 's')}: {_preview(missing, len(missing))}; "
                    "add the files or remove the ids from the split file"
                )
    names = list(splits)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            both = sorted(set(splits[a]) & set(splits[b]))
            if both:
                report.errors.append(
                    f"split {a!r} and split {b!r} share {_count(len(both), 'id')}: "
                    f"{_preview(both, len(both))}; the splits must be disjoint"
                )
    used = set().union(*splits.values()) if splits else set()
    if splits:
        unused = sorted(set(images) - used)
        if unused:
            report.warnings.append(
                f"{_count(len(unused), 'image')} in {root / 'images'} in no split: "
                f"{_preview(unused, len(unused))}"
            )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        report.warnings.append(
            f"{_count(len(orphans), 'mask')} in {root / 'masks'} without an image: "
            f"{_preview(orphans, len(orphans))}"
        )
    no_mask = sorted(set(images) - set(masks) - used)
    if no_mask and masks:
        report.warnings.append(
            f"{_count(len(no_mask), 'image')} (in no split) without a mask: "
            f"{_preview(no_mask, len(no_mask))}"
        )

    targets = _decode_all(images, masks, report)
    for split, ids in splits.items():
        read = [i for i in ids if i in targets]
        if not read:
            continue
        report.split_targets[split] = sum(targets[i] for i in read)
        if report.split_targets[split] == 0:
            report.warnings.append(
                f"split {split!r} has no target at all: none of the {_count(len(read), 'mask')} "
                "of its ids holds a target pixel (a 16-bit or label mask read as empty? check "
                "the mask values); training on it learns nothing, scoring it gives IoU nan"
            )
    report.seconds = time.perf_counter() - start
    return report


def _decode_all(
    images: dict[str, Path], masks: dict[str, Path], report: DatasetReport
) -> dict[str, int]:
    """Decode every file (a few threads: OpenCV releases the GIL) and gather statistics.

    Returns:
        Id -> number of targets, for every id whose mask was read.
    """
    targets: dict[str, int] = {}
    ids = sorted(set(images) | set(masks))
    workers = max(1, min(4, os.cpu_count() or 1))
    shapes: list[tuple[int, int]] = []
    modes: Counter[str] = Counter()
    per_image: Counter[int] = Counter()
    nonbinary: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda i: _check_pair(i, images.get(i), masks.get(i)), ids)
        for res in tqdm(
            results, total=len(ids), desc="check", unit="img", leave=False, disable=None
        ):
            report.errors.extend(res.errors)
            report.warnings.extend(res.warnings)
            if res.shape is not None:
                shapes.append(res.shape)
                modes[res.mode or "?"] += 1
            if res.nonbinary:
                nonbinary.append(res.id)
            if res.areas is not None:
                targets[res.id] = len(res.areas)
            if res.areas is not None and res.id in images and res.shape is not None:
                per_image[len(res.areas)] += 1
                report.n_targets += len(res.areas)
                report.n_empty += not res.areas
                for area in res.areas:
                    for label, lo, hi in AREA_BINS:
                        if lo <= area <= hi:
                            report.target_areas[label] += 1
                            break
    if nonbinary:
        report.warnings.append(
            f"{_count(len(nonbinary), 'mask')} with values other than 0 and 255 (or 0 and 1, "
            "or 0 and 65535); pixels above half the range their values use (127.5 up to 255, "
            f"32767.5 up to 65535) count as target: {_preview(nonbinary, len(nonbinary))}"
        )
    report.n_decoded = len(shapes)
    if shapes:
        hs = [s[0] for s in shapes]
        ws = [s[1] for s in shapes]
        report.n_sizes = len(set(shapes))
        report.height_range = (min(hs), max(hs))
        report.width_range = (min(ws), max(ws))
    report.modes = dict(modes.most_common())
    report.targets_per_image = dict(sorted(per_image.items()))
    return targets


def _bars(rows: list[tuple[str, int]], width: int = 40) -> list[str]:
    """Render (label, count) rows as aligned text bars."""
    if not rows:
        return []
    top = max(c for _, c in rows) or 1
    lw = max(len(label) for label, _ in rows)
    cw = max(len(str(c)) for _, c in rows)
    out = []
    for label, count in rows:
        bar = "#" * round(width * count / top)
        if count and not bar:
            bar = "."
        out.append(f"  {label:>{lw}} | {count:>{cw}} {bar}".rstrip())
    return out


def format_report(report: DatasetReport) -> str:
    """Render a report as readable text: counts, sizes, histograms, warnings, errors."""
    lines = [
        f"dataset {report.root} (layout {report.layout}, checked in {report.seconds:.1f} s)",
        f"images {report.n_images}, masks {report.n_masks}, decoded {report.n_decoded}",
        "splits: "
        + (", ".join(f"{k} {v}" for k, v in report.splits.items()) if report.splits else "none"),
    ]
    if report.height_range and report.width_range:
        lines.append(
            f"image sizes: {report.n_sizes} distinct, height {report.height_range[0]}.."
            f"{report.height_range[1]}, width {report.width_range[0]}..{report.width_range[1]}"
        )
    if report.modes:
        lines.append("image modes: " + ", ".join(f"{k} {v}" for k, v in report.modes.items()))
    n_with_mask = sum(report.targets_per_image.values())
    lines.append(
        f"targets: {report.n_targets} in {n_with_mask} images with a readable mask, "
        f"{report.n_empty} images without target"
    )
    if report.split_targets:
        lines.append(
            "targets per split: " + ", ".join(f"{k} {v}" for k, v in report.split_targets.items())
        )
    if report.targets_per_image:
        top = max(report.targets_per_image)
        rows = [(str(k), report.targets_per_image.get(k, 0)) for k in range(min(top, 9) + 1)]
        if top >= 10:
            rows.append((">=10", sum(v for k, v in report.targets_per_image.items() if k >= 10)))
        lines.append("targets per image:")
        lines += _bars(rows)
    if report.n_targets:
        lines.append("target area (pixels):")
        lines += _bars(list(report.target_areas.items()))
    lines.append(f"warnings ({len(report.warnings)}):")
    lines += [f"  - {w}" for w in report.warnings] or ["  none"]
    lines.append(f"errors ({len(report.errors)}):")
    lines += [f"  - {e}" for e in report.errors] or ["  none"]
    lines.append("result: OK" if report.ok else f"result: FAILED ({len(report.errors)} errors)")
    return "\n".join(lines)
