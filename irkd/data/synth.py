"""Synthetic infrared small-target dataset, for tests and smoke runs.

Each image is clutter (gradient, multi-octave cloud texture, optional horizon edge, bright
blobs larger than any target that are not targets, sensor noise) plus 1 to 3 small
Gaussian targets whose amplitude is a random SNR times the local background std. The mask
is exact: the pixels where a target's own profile is above half its peak, at least the
pixel nearest its centre, so a target's mask spans 1 to 9 pixels in each direction.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from irkd.data.errors import DatasetError
from irkd.data.io import write_png

__all__ = ["synthesize"]

_MARKER = "# Synthetic IRSTD dataset (irkd.data.synth)"
_MASK_LEVEL = 0.5  # mask = target profile above this fraction of its peak
_EXTENT = (1.0, 9.0)  # target extent range (pixels, diameter of the half-peak region)
_SNR = (2.5, 10.0)  # peak amplitude / local background std
_MIN_AMPLITUDE = 12.0  # grey levels, so that faint targets survive 8-bit quantisation
_BLOB_SIGMA = (5.0, 14.0)  # bright non-target structures, far larger than targets
_MIN_SEPARATION = 20  # pixels between target centres (distinct components)
_MARGIN = 6  # pixels between a target centre and the border


@dataclass(frozen=True)
class _Target:
    cy: float
    cx: float
    sy: float
    sx: float
    angle: float
    snr: float


def _noise_field(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth zero-mean noise with features of about ``cell`` pixels (upsampled lattice)."""
    n = max(2, size // cell + 2)
    lattice = rng.standard_normal((n, n)).astype(np.float32)
    big = cv2.resize(lattice, (n * cell, n * cell), interpolation=cv2.INTER_CUBIC)
    oy, ox = rng.integers(0, cell, 2)
    return big[oy : oy + size, ox : ox + size]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Infrared-like clutter, float32 in grey levels (before noise and targets)."""
    ramp = (np.arange(size, dtype=np.float32) / size - 0.5)[None, :]
    gy, gx = rng.normal(0.0, 25.0, 2)
    bg = np.float32(rng.uniform(50.0, 140.0)) + gx * ramp + gy * ramp.T

    cloud = np.zeros((size, size), np.float32)
    for octave, cell in enumerate((96, 48, 24, 12, 6)):
        if cell <= size * 2:
            cloud += _noise_field(rng, size, cell) * np.float32(0.55**octave)
    cloud /= cloud.std() + 1e-6
    # Cumulus-like: mostly dark sky, brighter billows where the field is high.
    cloud = np.maximum(cloud + rng.uniform(-0.5, 0.8), 0.0)
    bg += cloud * np.float32(rng.uniform(4.0, 30.0))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.35:  # horizon: a ground region with texture and a bright edge
        y0 = rng.uniform(0.45, 0.9) * size
        line = y0 + np.tan(rng.uniform(-0.15, 0.15)) * (xx - size / 2)
        ground = (yy > line).astype(np.float32)
        ground = cv2.GaussianBlur(ground, (0, 0), 1.0)
        texture = _noise_field(rng, size, 4) * 6.0 + _noise_field(rng, size, 16) * 10.0
        bg += ground * (np.float32(rng.uniform(-40.0, 40.0)) + texture)
        edge_width = rng.uniform(0.7, 1.5)
        edge = np.exp(-((yy - line) ** 2) / (2 * edge_width**2))
        bg += np.float32(rng.uniform(10.0, 40.0)) * edge
    for _ in range(int(rng.integers(0, 4))):  # bright non-target structures
        cy, cx = rng.uniform(0, size, 2)
        sy, sx = rng.uniform(*_BLOB_SIGMA, 2)
        r2 = ((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2
        bg += np.float32(rng.uniform(15.0, 60.0)) * np.exp(-0.5 * r2)
    return cv2.GaussianBlur(bg, (0, 0), 0.7)  # optics


def _place_targets(rng: np.random.Generator, size: int, count: int) -> list[_Target]:
    """Draw ``count`` well-separated targets (fewer if the image is too crowded)."""
    targets: list[_Target] = []
    k_half = math.sqrt(2.0 * math.log(1.0 / _MASK_LEVEL))  # half-peak radius / sigma
    for _ in range(50 * count):
        if len(targets) == count:
            break
        cy, cx = rng.uniform(_MARGIN, size - 1 - _MARGIN, 2)
        if any(math.hypot(cy - t.cy, cx - t.cx) < _MIN_SEPARATION for t in targets):
            continue
        extent = rng.uniform(*_EXTENT)
        aspect = rng.uniform(0.6, 1.0)
        d_major, d_minor = extent, max(_EXTENT[0], extent * aspect)
        targets.append(
            _Target(
                cy=float(cy),
                cx=float(cx),
                sy=d_major / 2 / k_half,
                sx=d_minor / 2 / k_half,
                angle=float(rng.uniform(0.0, math.pi)),
                snr=float(rng.uniform(*_SNR)),
            )
        )
    return targets


def _render_target(t: _Target, size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Unit-peak profile and exact mask of a target in a window around it."""
    half = int(math.ceil(4.0 * max(t.sy, t.sx))) + 1
    y0, y1 = max(0, int(t.cy) - half), min(size, int(t.cy) + half + 1)
    x0, x1 = max(0, int(t.cx) - half), min(size, int(t.cx) + half + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - t.cy, xx - t.cx
    c, s = math.cos(t.angle), math.sin(t.angle)
    u, v = c * dy + s * dx, -s * dy + c * dx
    profile = np.exp(-0.5 * ((u / t.sy) ** 2 + (v / t.sx) ** 2))
    mask = profile > _MASK_LEVEL
    mask[int(round(t.cy)) - y0, int(round(t.cx)) - x0] = True
    return (slice(y0, y1), slice(x0, x1)), profile.astype(np.float32), mask


def _make_image(
    rng: np.random.Generator, size: int, with_targets: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image and its 0/255 mask."""
    bg = _background(rng, size)
    bg += rng.normal(0.0, rng.uniform(1.5, 6.0), (size, size)).astype(np.float32)
    image = bg.copy()
    mask = np.zeros((size, size), np.uint8)
    if with_targets:
        for t in _place_targets(rng, size, int(rng.integers(1, 4))):
            window, profile, tmask = _render_target(t, size)
            cy, cx = int(round(t.cy)), int(round(t.cx))
            local = bg[max(0, cy - 7) : cy + 8, max(0, cx - 7) : cx + 8]
            amplitude = max(_MIN_AMPLITUDE, t.snr * float(local.std()))
            image[window] += np.float32(amplitude) * profile
            mask[window][tmask] = 255
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """Create ``out`` or, with ``overwrite``, clear a folder this module wrote before."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output path {out} is a file: choose a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(
                f"output folder {out} is not empty: choose a new or empty folder, or pass "
                "--overwrite (overwrite=True) to replace a synthetic dataset written there before"
            )
        source = out / "SOURCE.md"
        head = source.read_text(encoding="utf-8").splitlines()[:1] if source.is_file() else []
        if head != [_MARKER]:
            raise DatasetError(
                f"refusing to overwrite {out}: it holds no SOURCE.md written by irkd's "
                "synthesize, so it may be real data; remove it yourself or choose another folder"
            )
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("train.txt", "test.txt", "SOURCE.md"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def synthesize(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 256,
    test_fraction: float = 0.5,
    empty_fraction: float = 0.1,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the irkd layout.

    Writes images/<id>.png (8-bit gray), masks/<id>.png (0/255), train.txt, test.txt and
    SOURCE.md; ids are ``synth_00001`` ... Image ``i`` depends only on (seed, i).

    Args:
        out: Output folder (created; must be empty unless ``overwrite``).
        n: Number of images (>= 2).
        seed: Random seed; the output is identical for identical arguments.
        size: Image side in pixels (>= 32).
        test_fraction: Fraction of ids in test.txt, in (0, 1); both splits get >= 1 id.
        empty_fraction: Fraction of images without any target, in [0, 1].
        overwrite: Replace a synthetic dataset previously written in ``out``. Folders not
            written by this function are never overwritten.

    Returns:
        The output folder.

    Raises:
        ValueError: Invalid arguments.
        DatasetError: ``out`` is not empty (or not a synthetic dataset, with ``overwrite``).

    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"synthesize: n must be an integer >= 2, got {n!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"synthesize: test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"synthesize: empty_fraction must be in [0, 1], got {empty_fraction}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"synthesize: size must be an integer >= 32, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"synthesize: seed must be an integer >= 0, got {seed!r}")

    out = Path(out)
    _prepare_folder(out, overwrite)
    ids = [f"synth_{i:05d}" for i in range(1, n + 1)]
    plan = np.random.default_rng([seed, n, 0])
    n_empty = round(n * empty_fraction)
    empty = set(plan.choice(n, size=n_empty, replace=False).tolist()) if n_empty else set()
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    test = set(plan.permutation(n)[:n_test].tolist())

    for i in tqdm(range(n), desc="synthesize", unit="img", leave=False, disable=None):
        rng = np.random.default_rng([seed, i + 1])
        image, mask = _make_image(rng, size, with_targets=i not in empty)
        write_png(out / "images" / f"{ids[i]}.png", image)
        write_png(out / "masks" / f"{ids[i]}.png", mask)
    (out / "train.txt").write_text("".join(f"{ids[i]}\n" for i in range(n) if i not in test))
    (out / "test.txt").write_text("".join(f"{ids[i]}\n" for i in range(n) if i in test))
    (out / "SOURCE.md").write_text(_source_md(n, seed, size, n - n_test, n_test, n_empty))
    return out


def _source_md(n: int, seed: int, size: int, n_train: int, n_test: int, n_empty: int) -> str:
    return f"""{_MARKER}

Generated by `irkd.data.synthesize(out, n={n}, seed={seed}, size={size}, ...)`; not real
infrared data. Use it for tests and smoke runs only.

- Images: {n} x {size}x{size}, 8-bit grayscale PNG, ids synth_00001..synth_{n:05d}.
  Image i depends only on (seed, i).
- Masks: 0/255 PNG. A pixel is target where the target's own Gaussian profile is above
  {_MASK_LEVEL:g} of its peak; the pixel nearest the centre always is.
- Splits: train.txt {n_train} ids, test.txt {n_test} ids (random, disjoint).
- Background: base level 50..140, linear gradient, cloud texture (cubic-upsampled noise at
  cells 96/48/24/12/6 px, octave gain 0.55, rectified), a horizon with textured ground and a
  bright edge in about 35% of the images, 0..3 bright Gaussian blobs with sigma
  {_BLOB_SIGMA[0]:g}..{_BLOB_SIGMA[1]:g} px that are NOT targets, 0.7 px blur (optics), then
  Gaussian noise with std 1.5..6 grey levels.
- Targets: 1..3 per image ({n_empty} images have none), rotated elliptical Gaussians whose
  half-peak region spans {_EXTENT[0]:g}..{_EXTENT[1]:g} px (aspect 0.6..1), centres at least
  {_MIN_SEPARATION} px apart and {_MARGIN} px from the border; peak amplitude = SNR x std of
  the 15x15 background (noise included) around the centre, SNR uniform in
  {_SNR[0]:g}..{_SNR[1]:g}, at least {_MIN_AMPLITUDE:g} grey levels; clipped to 0..255.
"""
