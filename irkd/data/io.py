"""Image and mask files: decoding to grayscale, binarising masks, writing PNGs.

OpenCV decodes every file (numpy + OpenCV only, no PIL). Files are read as bytes and
decoded with ``cv2.imdecode``, so non-ASCII paths work on every platform.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import cv2
import numpy as np

from irkd.data.errors import DatasetError, MaskSizeWarning

__all__ = ["read_gray", "read_gray_native", "read_mask", "value_range", "write_png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def _read_bytes(path: Path, kind: str) -> np.ndarray:
    """Return the raw bytes of ``path`` as a uint8 array; DatasetError when unreadable."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(
            f"{kind} file {path} not found: check the path, or remove its id from the split files"
        ) from None
    except IsADirectoryError:
        raise DatasetError(f"{kind} path {path} is a folder, expected an image file") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {kind} file {path}: {exc}") from None


def _png_is_complete(data: bytes) -> bool:
    """Walk the chunks of a PNG: False when one overruns the file or IHDR/IEND is missing.

    OpenCV can spend seconds on a PNG whose chunk lengths are garbage (a truncated or
    damaged download); this cheap walk rejects such files first.
    """
    pos, first = 8, True
    while pos + 12 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if first and ctype != b"IHDR":
            return False
        first = False
        pos += 12 + length
        if pos > len(data):
            return False
        if ctype == b"IEND":
            return True
    return False


def _decode(path: Path, kind: str) -> tuple[np.ndarray, str]:
    """Decode ``path`` unchanged (native depth and channels) and name its pixel mode.

    Returns:
        The decoded array (HxW, HxWx3 BGR or HxWx4 BGRA; palette files come expanded) and a
        PIL-style mode name ("L", "LA", "RGB", "RGBA", "P", with ";16" for 16-bit PNGs).

    """
    buf = _read_bytes(path, kind)
    is_png = buf[:8].tobytes() == _PNG_SIGNATURE
    array = None
    if buf.size and (not is_png or _png_is_complete(buf.tobytes())):
        array = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(
            f"{kind} file {path} cannot be decoded (empty, corrupt or not an image): "
            "replace it, or remove it and its id from the split files"
        )
    mode = ""
    if is_png:
        mode = _PNG_COLOUR_TYPES.get(int(buf[25]), "")
        if mode and int(buf[24]) == 16:
            mode += ";16"
    if not mode:
        channels = 1 if array.ndim == 2 else array.shape[2]
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")
        if array.dtype != np.uint8:
            mode += f";{array.dtype.name}"
    return array, mode


def _to_gray_u8(array: np.ndarray, path: Path) -> np.ndarray:
    """Convert a decoded array to uint8 grayscale (luma BT.601, alpha ignored)."""
    array = _to_gray(array, path)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Round x * 255 / 65535: 0 -> 0, 65535 -> 255.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(array) * scale + 0.5, 0, 255).astype(np.uint8)


def value_range(top: float) -> float:
    """The value range a map's largest value ``top`` belongs to: 1, 255 or 65535.

    Masks and prediction maps are read by the range their values use, not by their pixel
    type: a 16-bit PNG may hold 0/65535, 0/255 (an 8-bit mask saved as 16 bits) or 0/1 (a
    label image); an 8-bit one 0/255 or 0/1. Values above 65535 (float files) give ``top``.
    """
    for limit in (1.0, 255.0, 65535.0):
        if top <= limit:
            return limit
    return float(top)


def _binarise_mask(array: np.ndarray) -> np.ndarray:
    """Binarise a decoded mask to uint8 {0, 1}; see :func:`read_mask` for the rule."""
    if array.ndim == 3:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array
        array = colour.max(axis=2)
    top = float(array.max()) if array.size else 0.0
    threshold = value_range(top) / 2.0
    return (array > threshold).astype(np.uint8)


def _to_gray(array: np.ndarray, path: Path) -> np.ndarray:
    """Grayscale at the file's own depth (uint8, uint16 or float; luma BT.601, alpha ignored)."""
    if array.ndim == 3:
        if array.shape[2] == 1:
            array = array[:, :, 0]
        elif array.shape[2] in (3, 4):
            code = cv2.COLOR_BGR2GRAY if array.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
            array = cv2.cvtColor(array, code)
        else:
            raise DatasetError(
                f"image file {path} has {array.shape[2]} channels; expected 1, 3 or 4"
            )
    if array.dtype not in (np.uint8, np.uint16) and not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(
            f"image file {path} has pixel type {array.dtype}; expected 8-bit, 16-bit or float"
        )
    return np.ascontiguousarray(array)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a {0,1} mask to ``shape`` (H, W), nearest neighbour on pixel centres."""
    height, width = shape
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 grayscale.

    Handles gray (L), gray+alpha, RGB, RGBA and palette files, 8- or 16-bit. Colour is
    converted with the BT.601 luma weights (as PIL's ``convert("L")``); alpha is ignored;
    16-bit values are scaled to 0..255 with rounding.

    Args:
        path: Image file (PNG, BMP, JPEG, TIFF: whatever OpenCV decodes).

    Returns:
        uint8 array of shape (H, W).

    Raises:
        DatasetError: The file is missing, unreadable or not a decodable image.

    """
    path = Path(path)
    array, _ = _decode(path, "image")
    return _to_gray_u8(array, path)


def read_gray_native(path: str | Path, kind: str = "image") -> np.ndarray:
    """Read an image file as grayscale at its own depth (uint8, uint16 or float32/64).

    Like :func:`read_gray` without the conversion to 8 bits, for maps whose values must be
    read by their range (:func:`value_range`), such as saved predictions.

    Raises:
        DatasetError: The file is missing, unreadable or not a decodable image.
    """
    path = Path(path)
    array, _ = _decode(path, kind)
    return _to_gray(array, path)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a target mask as uint8 {0, 1}.

    A pixel is target where its value is above half the range the mask's values use
    (:func:`value_range` of its largest value): > 0.5 for a 0/1 label image, > 127.5 for
    values up to 255, > 32767.5 for values up to 65535; so anti-aliased or JPEG-damaged
    edges do not grow the targets, and the range is the values', not the pixel type's: a
    16-bit PNG holding 0/255 (or 0/1, or 0/65535) reads the same as the 8-bit one. Colour
    masks use the brightest colour channel; alpha is ignored.

    Args:
        path: Mask file.
        shape: Expected (H, W), normally the image's. A mask of another size is resized
            nearest-neighbour to it, with a :class:`MaskSizeWarning` naming the file.

    Returns:
        uint8 array of shape ``shape`` (or the file's own shape), values in {0, 1}.

    Raises:
        DatasetError: The file is missing, unreadable or not a decodable image.

    """
    path = Path(path)
    array, _ = _decode(path, "mask")
    mask = _binarise_mask(array)
    if shape is not None and mask.shape != tuple(shape):
        height, width = mask.shape
        warnings.warn(
            MaskSizeWarning(
                f"mask {path} is {width}x{height} (WxH) but its image is "
                f"{shape[1]}x{shape[0]}: resized nearest-neighbour to the image size"
            ),
            stacklevel=2,
        )
        mask = _resize_nearest(mask, (int(shape[0]), int(shape[1])))
    return mask


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write an array as a PNG file, creating the parent folders.

    Args:
        path: Output file; its suffix should be ``.png``.
        array: uint8 or uint16, shape (H, W), (H, W, 3) BGR or (H, W, 4) BGRA. A bool
            array is written as 0/255.

    Raises:
        ValueError: Unsupported dtype or shape.
        OSError: The file could not be written.

    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png({path}): dtype {array.dtype} unsupported, use uint8/uint16")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise ValueError(f"write_png({path}): shape {array.shape} unsupported, use HxW or HxWxC")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded.tofile(path)
