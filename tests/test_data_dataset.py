from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from irkd.data import DatasetError, IRSTDDataset, MaskSizeWarning, Sample


def test_irkd_layout_on_synth(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    assert ds.name == "SYNTH" and ds.split == "train" and ds.layout == "irkd"
    assert ds.ids == (synth_root / "train.txt").read_text().split()
    assert len(ds) == len(ds.ids) > 0
    sample = ds[0]
    assert isinstance(sample, Sample) and sample.id == ds.ids[0]
    assert sample.image.dtype == np.uint8 and sample.image.shape == (256, 256)
    assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask)) <= {0, 1}
    assert ds[-1].id == ds.ids[-1]
    assert ds.image_path(ds.ids[0]) == synth_root / "images" / f"{ds.ids[0]}.png"
    assert ds.mask_path(ds.ids[0]) == synth_root / "masks" / f"{ds.ids[0]}.png"
    with pytest.raises(DatasetError, match="no image file for id 'zzz'"):
        ds.image_path("zzz")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"dataset root {tmp_path / 'nope'} not found"):
        IRSTDDataset(tmp_path / "nope", "train")


def test_missing_split_file(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:2]
    root = copy_dataset(synth_root, ids, [])
    with pytest.raises(DatasetError) as err:
        IRSTDDataset(root, "val")
    msg = str(err.value)
    assert str(root / "val.txt") in msg and "img_idx/val_<NAME>.txt" in msg
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        IRSTDDataset(root, "train", layout="voc")


def test_empty_split(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:2]
    root = copy_dataset(synth_root, ids, [])
    with pytest.raises(DatasetError, match=rf"{root / 'test.txt'} lists no ids"):
        IRSTDDataset(root, "test")
    (root / "test.txt").write_text("\n  \r\n\n")
    with pytest.raises(DatasetError, match="lists no ids"):
        IRSTDDataset(root, "test")


def test_ids_without_files_are_listed(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:3]
    root = copy_dataset(synth_root, ids, [])
    extra = [f"ghost_{k}" for k in range(7)]
    (root / "train.txt").write_text("\n".join(ids + extra) + "\n")
    with pytest.raises(DatasetError) as err:
        IRSTDDataset(root, "train")
    msg = str(err.value)
    assert "7 of the 10 ids" in msg and str(root / "train.txt") in msg
    assert str(root / "images") in msg and "ghost_0" in msg and "ghost_4" in msg
    assert "ghost_6" not in msg and "..." in msg

    (root / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "masks" / f"{ids[1]}.png").unlink()
    with pytest.raises(DatasetError, match=rf"1 of the 3 ids .* no mask file in {root / 'masks'}"):
        IRSTDDataset(root, "train")

    shutil.rmtree(root / "masks")
    with pytest.raises(DatasetError, match=rf"masks folder {root / 'masks'} not found"):
        IRSTDDataset(root, "train")


def test_duplicated_ids(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:2]
    root = copy_dataset(synth_root, ids, [])
    (root / "train.txt").write_text(f"{ids[0]}\n{ids[1]}\n{ids[0]}\n")
    with pytest.raises(DatasetError, match=f"more than once.*{ids[0]}"):
        IRSTDDataset(root, "train")


def test_crlf_blank_lines_and_bom(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:3]
    root = copy_dataset(synth_root, ids, [])
    (root / "train.txt").write_bytes(
        b"\xef\xbb\xbf" + f"{ids[0]}\r\n\r\n  {ids[1]} \r\n{ids[2]}".encode()
    )
    assert IRSTDDataset(root, "train").ids == ids


def test_basicirstd_layout(synth_root: Path, copy_dataset) -> None:
    train = (synth_root / "train.txt").read_text().split()[:3]
    test = (synth_root / "test.txt").read_text().split()[:2]
    root = copy_dataset(synth_root, train, test, name="MyData")
    (root / "img_idx").mkdir()
    (root / "train.txt").rename(root / "img_idx" / "train_MyData.txt")
    (root / "test.txt").rename(root / "img_idx" / "test_other-name.txt")  # any single name
    ds = IRSTDDataset(root, "train")
    assert ds.layout == "basicirstd" and ds.ids == train
    assert ds.split_file == root / "img_idx" / "train_MyData.txt"
    assert IRSTDDataset(root, "test", layout="basicirstd").ids == test
    with pytest.raises(DatasetError, match="train.txt"):
        IRSTDDataset(root, "train", layout="irkd")
    (root / "img_idx" / "test_third.txt").write_text(test[0])
    with pytest.raises(DatasetError, match="several split files"):
        IRSTDDataset(root, "test")
    # irkd split file wins under "auto"
    (root / "train.txt").write_text(train[0])
    assert IRSTDDataset(root, "train").ids == train[:1]


def test_extension_fallback_and_priority(synth_root: Path, copy_dataset) -> None:
    ids = (synth_root / "train.txt").read_text().split()[:2]
    root = copy_dataset(synth_root, ids, [])
    png = root / "images" / f"{ids[0]}.png"
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(root / "images" / f"{ids[0]}.bmp"), 255 - image)
    ds = IRSTDDataset(root, "train")
    assert ds.image_path(ids[0]) == png  # .png first
    png.unlink()
    ds = IRSTDDataset(root, "train")
    assert ds.image_path(ids[0]).suffix == ".bmp"
    assert np.array_equal(ds[0].image, 255 - image)


def test_real_nudt_few_ids(nudt_root: Path) -> None:
    ds = IRSTDDataset(nudt_root, "test")
    assert ds.name == "NUDT-SIRST" and len(ds) == 664
    assert len(IRSTDDataset(nudt_root, "train")) == 663
    for i in (0, 100, -1):
        s = ds[i]
        assert s.image.shape == s.mask.shape == (256, 256)
        assert s.mask.sum() > 0


def test_real_nuaa_misc_111(nuaa_root: Path) -> None:
    split = next(
        s for s in ("train", "test") if "Misc_111" in (nuaa_root / f"{s}.txt").read_text().split()
    )
    ds = IRSTDDataset(nuaa_root, split)
    with pytest.warns(MaskSizeWarning, match="Misc_111"):
        s = ds.load("Misc_111")
    assert s.image.shape == s.mask.shape == (220, 325)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ds.load("Misc_1")
    assert s.image.shape == s.mask.shape
