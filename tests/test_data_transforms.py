from __future__ import annotations

import numpy as np
import pytest

from irkd.data import TrainAugment, crop_back, normalize, pad_to_multiple


def test_normalize() -> None:
    x = np.array([[0, 100, 255]], np.uint8)
    out = normalize(x, 100.0, 50.0)
    assert out.dtype == np.float32
    assert np.allclose(out, [[-2.0, 0.0, 3.1]])
    with pytest.raises(ValueError, match="std"):
        normalize(x, 0.0, 0.0)


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (31, 32), (32, 32), (65, 3), (1, 1, 13, 97)])
def test_pad_crop_round_trip(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    padded, hw = pad_to_multiple(x, 32, value=-5.0)
    assert hw == shape[-2:]
    assert padded.shape[:-2] == shape[:-2]
    assert all(s % 32 == 0 and s >= o for s, o in zip(padded.shape[-2:], shape[-2:], strict=True))
    assert padded.shape[-2] - shape[-2] < 32 and padded.shape[-1] - shape[-1] < 32
    assert np.array_equal(padded[..., : hw[0], : hw[1]], x)  # padding at bottom/right only
    assert np.all(padded[..., hw[0] :, :] == -5.0) and np.all(padded[..., :, hw[1] :] == -5.0)
    back = crop_back(padded, hw)
    assert back.shape == x.shape and np.array_equal(back, x)


def test_pad_other_multiple() -> None:
    padded, hw = pad_to_multiple(np.ones((10, 17), np.uint8), multiple=8)
    assert padded.shape == (16, 24) and padded.dtype == np.uint8 and hw == (10, 17)


def _image_and_mask(h: int, w: int, points: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1.0  # all > 0, all distinct
    mask = np.zeros((h, w), np.uint8)
    for y, x in points:
        mask[y, x] = 1
    return image, mask


def test_crop_shape_dtype_and_pairing() -> None:
    image, mask = _image_and_mask(100, 140, [(10, 10), (90, 130)])
    aug = TrainAugment(crop=32, target_bias=0.5)
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, m = aug(image, mask, rng)
        assert x.shape == m.shape == (32, 32)
        assert x.dtype == np.float32 and m.dtype == np.uint8
        assert x.flags.c_contiguous and m.flags.c_contiguous
        # image and mask were cropped/flipped together: the mask's pixel carries its value
        for y, xx in zip(*np.nonzero(m), strict=True):
            assert x[y, xx] in (image[10, 10], image[90, 130])


def test_small_image_is_padded_bottom_right() -> None:
    image, mask = _image_and_mask(20, 30, [(5, 7)])
    aug = TrainAugment(crop=64, target_bias=1.0)
    rng = np.random.default_rng(0)
    seen_unflipped = False
    for _ in range(40):
        x, m = aug(image, mask, rng)
        assert x.shape == (64, 64)
        assert (x > 0).sum() == 20 * 30 and m.sum() == 1
        if x[0, 0] == image[0, 0]:  # no flip: the image sits top-left
            seen_unflipped = seen_unflipped or np.array_equal(x[:20, :30], image)
            if np.array_equal(x[:20, :30], image):
                assert np.all(x[20:, :] == 0) and np.all(x[:, 30:] == 0)
    assert seen_unflipped


def test_pad_value_is_used() -> None:
    image, mask = _image_and_mask(10, 10, [])
    x, m = TrainAugment(crop=16, pad_value=-3.0)(image, mask, np.random.default_rng(0))
    assert (x == -3.0).sum() == 16 * 16 - 100 and m.sum() == 0


def test_target_bias_one_always_contains_a_target() -> None:
    rng = np.random.default_rng(3)
    image, mask = _image_and_mask(300, 400, [(3, 5), (290, 390), (150, 10)])
    aug = TrainAugment(crop=48, target_bias=1.0)
    positions = set()
    for _ in range(200):
        x, m = aug(image, mask, rng)
        assert m.sum() >= 1
        positions.add(tuple(np.argwhere(m)[0]))
    assert len(positions) > 20  # the target is not always at the same place in the crop


def test_target_bias_zero_is_uniform() -> None:
    rng = np.random.default_rng(3)
    image, mask = _image_and_mask(300, 400, [(150, 200)])
    hits = sum(
        TrainAugment(crop=48, target_bias=0.0)(image, mask, rng)[1].sum() for _ in range(300)
    )
    assert hits < 30  # a 48x48 window covers the pixel with probability ~ 0.02


def test_flips_and_transpose_all_happen() -> None:
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    mask = np.zeros((4, 4), np.uint8)
    aug = TrainAugment(crop=4, target_bias=0.0)
    rng = np.random.default_rng(0)
    variants = {aug(image, mask, rng)[0].tobytes() for _ in range(200)}
    assert len(variants) == 8  # the dihedral group of the square


def test_deterministic_given_rng() -> None:
    image, mask = _image_and_mask(90, 70, [(40, 40), (80, 10)])
    aug = TrainAugment(crop=32, target_bias=0.8)
    a = [aug(image, mask, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0][0], a[1][0]) and np.array_equal(a[0][1], a[1][1])
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(10):
        (x1, m1), (x2, m2) = aug(image, mask, r1), aug(image, mask, r2)
        assert np.array_equal(x1, x2) and np.array_equal(m1, m2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="target_bias"):
        TrainAugment(target_bias=1.5)
    with pytest.raises(ValueError, match="crop"):
        TrainAugment(crop=0)
    with pytest.raises(ValueError, match="equal"):
        TrainAugment(crop=4)(np.zeros((5, 5)), np.zeros((5, 6)), np.random.default_rng())
