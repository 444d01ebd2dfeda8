"""Array transforms for training and evaluation (numpy + OpenCV, no framework)."""

from __future__ import annotations

import numpy as np

__all__ = ["TrainAugment", "crop_back", "normalize", "pad_to_multiple"]


def normalize(image_u8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Return ``(image - mean) / std`` as float32.

    Raises:
        ValueError: ``std`` is not positive.

    """
    if not std > 0:
        raise ValueError(f"normalize: std must be > 0, got {std}")
    out = np.asarray(image_u8, dtype=np.float32) - np.float32(mean)
    out *= np.float32(1.0 / std)
    return out


def pad_to_multiple(
    x: np.ndarray, multiple: int = 32, value: float = 0.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes at the bottom/right up to a multiple of ``multiple``.

    Args:
        x: Array of shape (..., H, W).
        multiple: Target multiple (the network's total stride).
        value: Fill value.

    Returns:
        The padded array (``x`` itself when no padding is needed) and the original (H, W).

    """
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    widths = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(x, widths, mode="constant", constant_values=value), (h, w)


def crop_back(pred: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Undo :func:`pad_to_multiple`: keep the top-left (H, W) of the last two axes."""
    h, w = hw
    return pred[..., :h, :w]


class TrainAugment:
    """Random crop biased towards targets, then random flips and transpose.

    The crop window is ``crop`` x ``crop``; an image smaller than that is first padded at
    the bottom/right (image with ``pad_value``, mask with 0). With probability
    ``target_bias``, and when the mask has a target, a target pixel is drawn uniformly and
    the window is placed at a uniformly random position among those that contain it (a
    window always centred on the target would teach the network a position prior);
    otherwise the window is uniformly random. Then horizontal flip, vertical flip and
    transpose, each with probability 0.5.

    The result depends only on the inputs and the generator's state.
    """

    def __init__(self, crop: int = 256, target_bias: float = 0.8, *, pad_value: float = 0.0):
        """Configure the augmentation.

        Args:
            crop: Side of the square crop, in pixels.
            target_bias: Probability of a crop containing a target (when there is one).
            pad_value: Fill for image pixels outside the image (0 = the mean once the image
                is normalised, the same fill as evaluation padding).

        """
        if crop < 1:
            raise ValueError(f"TrainAugment: crop must be >= 1, got {crop}")
        if not 0.0 <= target_bias <= 1.0:
            raise ValueError(f"TrainAugment: target_bias must be in [0, 1], got {target_bias}")
        self.crop = int(crop)
        self.target_bias = float(target_bias)
        self.pad_value = float(pad_value)

    def __repr__(self) -> str:
        return f"TrainAugment(crop={self.crop}, target_bias={self.target_bias})"

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one (image, mask) pair of shape (H, W) each.

        Returns:
            Contiguous image and mask of shape (crop, crop), dtypes preserved.

        """
        if image.shape[:2] != mask.shape[:2] or image.ndim != 2:
            raise ValueError(
                f"TrainAugment: image {image.shape} and mask {mask.shape} must be equal (H, W)"
            )
        c = self.crop
        h, w = image.shape
        if h < c or w < c:
            ph, pw = max(c - h, 0), max(c - w, 0)
            image = np.pad(image, ((0, ph), (0, pw)), constant_values=self.pad_value)
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=0)
            h, w = image.shape

        use_target = rng.random() < self.target_bias
        targets = np.flatnonzero(mask) if use_target else np.empty(0, np.int64)
        if targets.size:
            ty, tx = divmod(int(targets[rng.integers(targets.size)]), w)
            y0 = int(rng.integers(max(0, ty - c + 1), min(ty, h - c) + 1))
            x0 = int(rng.integers(max(0, tx - c + 1), min(tx, w - c) + 1))
        else:
            y0 = int(rng.integers(0, h - c + 1))
            x0 = int(rng.integers(0, w - c + 1))
        image = image[y0 : y0 + c, x0 : x0 + c]
        mask = mask[y0 : y0 + c, x0 : x0 + c]

        hflip, vflip, transpose = rng.random(3) < 0.5
        if hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if vflip:
            image, mask = image[::-1], mask[::-1]
        if transpose:
            image, mask = image.T, mask.T
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)
