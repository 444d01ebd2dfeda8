from __future__ import annotations

import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from irkd.data import DatasetError, MaskSizeWarning, read_gray, read_mask, write_png


def _ramp(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)


def _colour(h: int = 20, w: int = 30) -> np.ndarray:
    a = _ramp(h, w)
    return np.stack([a, 255 - a, (a // 2 + 40).astype(np.uint8)], axis=-1)  # RGB


def test_gray_png(tmp_path: Path) -> None:
    a = _ramp()
    cv2.imwrite(str(tmp_path / "g.png"), a)
    out = read_gray(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert np.array_equal(out, a)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_modes_match_pil_luma(tmp_path: Path, mode: str) -> None:
    rgb = _colour()
    if mode == "P":
        pil = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])  # alpha is ignored
        pil = Image.fromarray(rgba, "RGBA")
    elif mode == "LA":
        pil = Image.fromarray(rgb).convert("LA")
    else:
        pil = Image.fromarray(rgb)
    path = tmp_path / f"{mode}.png"
    pil.save(path)
    assert Image.open(path).mode == mode
    expected = np.asarray(Image.open(path).convert("RGB").convert("L"), dtype=int)
    out = read_gray(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    assert np.abs(out.astype(int) - expected).max() <= 1
    # the image really is coloured: a wrong channel order would be far off
    assert np.abs(out.astype(int) - rgb[..., 2].astype(int)).max() > 20


def test_bgr_and_bgra_written_by_opencv(tmp_path: Path) -> None:
    rgb = _colour()
    bgr = rgb[..., ::-1].copy()
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([bgr, np.zeros(bgr.shape[:2], np.uint8)]))
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(read_gray(tmp_path / "c.png"), expected)
    assert np.array_equal(read_gray(tmp_path / "a.png"), expected)


def test_16bit_is_scaled(tmp_path: Path) -> None:
    a = _ramp()
    cv2.imwrite(str(tmp_path / "w.png"), a.astype(np.uint16) * 257)
    out = read_gray(tmp_path / "w.png")
    assert out.dtype == np.uint8
    assert np.array_equal(out, a)


def test_bmp_and_missing_and_corrupt(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "x.bmp"), _ramp())
    assert np.array_equal(read_gray(tmp_path / "x.bmp"), _ramp())
    with pytest.raises(DatasetError, match=r"nope\.png not found"):
        read_gray(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DatasetError, match=r"bad\.png cannot be decoded"):
        read_gray(tmp_path / "bad.png")
    good = (tmp_path / "x.png").write_bytes(cv2.imencode(".png", _ramp())[1].tobytes())
    assert good > 100
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # truncated download
    t = time.perf_counter()
    with pytest.raises(DatasetError, match=r"cut\.png cannot be decoded"):
        read_gray(tmp_path / "cut.png")
    assert time.perf_counter() - t < 0.5
    assert np.array_equal(read_gray(tmp_path / "x.png"), _ramp())
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.png"):
        read_mask(tmp_path / "empty.png")
    with pytest.raises(DatasetError, match="is a folder"):
        read_gray(tmp_path)


def test_mask_threshold_and_label_masks(tmp_path: Path) -> None:
    m = np.array([[0, 100, 127, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), m)
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 0, 0, 1, 1]]
    cv2.imwrite(str(tmp_path / "l.png"), np.array([[0, 1, 0, 1]], np.uint8))
    out = read_mask(tmp_path / "l.png")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1, 0, 1]]
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0, 2] = 255  # a pure red target (BGR) has low luma but counts
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    assert read_mask(tmp_path / "c.png").tolist() == [[1, 0], [0, 0]]


def test_mask_resized_with_warning(tmp_path: Path) -> None:
    m = np.zeros((8, 12), np.uint8)
    m[2:4, 4:8] = 255
    write_png(tmp_path / "m.png", m)
    with pytest.warns(MaskSizeWarning, match=r"m\.png is 12x8 \(WxH\) but its image is 6x4"):
        out = read_mask(tmp_path / "m.png", (4, 6))
    assert out.shape == (4, 6)
    assert out.tolist() == [[0] * 6, [0, 0, 1, 1, 0, 0], [0] * 6, [0] * 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mask(tmp_path / "m.png", (8, 12)).shape == (8, 12)


def test_write_png_roundtrip(tmp_path: Path) -> None:
    a = _ramp()
    write_png(tmp_path / "sub" / "dir" / "a.png", a)
    assert np.array_equal(read_gray(tmp_path / "sub" / "dir" / "a.png"), a)
    write_png(tmp_path / "b.png", a > 100)
    assert set(np.unique(cv2.imread(str(tmp_path / "b.png"), 0)).tolist()) == {0, 255}
    with pytest.raises(ValueError, match="dtype"):
        write_png(tmp_path / "f.png", a.astype(np.float32))


def test_real_nuaa_modes_and_misc_111(nuaa_root: Path) -> None:
    # one file of each PIL mode present in NUAA-SIRST
    modes = {"RGB": None, "L": None, "RGBA": None, "P": None}
    for path in sorted((nuaa_root / "images").glob("*.png")):
        m = Image.open(path).mode
        if m in modes and modes[m] is None:
            modes[m] = path
        if all(modes.values()):
            break
    for m, path in modes.items():
        assert path is not None, m
        expected = np.asarray(Image.open(path).convert("RGB").convert("L"), dtype=int)
        assert np.abs(read_gray(path).astype(int) - expected).max() <= 1, path

    image = read_gray(nuaa_root / "images" / "Misc_111.png")
    assert image.shape == (220, 325)
    with pytest.warns(MaskSizeWarning) as record:
        mask = read_mask(nuaa_root / "masks" / "Misc_111.png", image.shape)
    assert len(record) == 1
    message = str(record[0].message)
    assert "Misc_111" in message and "592x400" in message and "325x220" in message
    assert mask.shape == (220, 325) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
