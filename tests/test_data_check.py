from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from irkd.data import AREA_BINS, DatasetError, check_dataset, format_report


def test_synth_is_clean(synth_root: Path) -> None:
    r = check_dataset(synth_root)
    assert r.ok and r.errors == [] and r.warnings == []
    assert r.layout == "irkd" and r.n_images == r.n_masks == r.n_decoded == 24
    assert set(r.splits) == {"train", "test"} and sum(r.splits.values()) == 24
    assert r.n_sizes == 1 and r.height_range == r.width_range == (256, 256)
    assert r.modes == {"L": 24}
    assert sum(r.targets_per_image.values()) == 24
    assert r.targets_per_image.get(0, 0) == r.n_empty > 0
    assert set(r.targets_per_image) <= {0, 1, 2, 3}
    assert sum(r.target_areas.values()) == r.n_targets > 0
    assert list(r.target_areas) == [b[0] for b in AREA_BINS]
    assert r.target_areas["101-400"] == r.target_areas[">400"] == 0
    text = format_report(r)
    assert "result: OK" in text and "targets per image" in text and "#" in text


def test_broken_folder_reports_everything(synth_root: Path, copy_dataset) -> None:
    train = (synth_root / "train.txt").read_text().split()[:4]
    test = (synth_root / "test.txt").read_text().split()[:4]
    root = copy_dataset(synth_root, train, test)
    (root / "masks" / f"{train[1]}.png").unlink()  # 1: an id without mask
    (root / "images" / f"{test[2]}.png").write_bytes(b"garbage")  # 2: unreadable image
    (root / "test.txt").write_text("\n".join([*test, train[0]]) + "\n")  # 3: in both splits
    (root / "train.txt").write_text("\n".join([*train, "ghost"]) + "\n")  # 4: no image/mask
    shutil.copy(root / "images" / f"{test[0]}.png", root / "images" / "extra.png")  # warning
    big = cv2.resize(
        cv2.imread(str(root / "masks" / f"{test[1]}.png"), 0),
        (300, 280),
        interpolation=cv2.INTER_NEAREST,
    )
    cv2.imwrite(str(root / "masks" / f"{test[1]}.png"), big)  # warning: size mismatch
    (root / "images" / "notes.txt").write_text("x")  # warning: not an image

    r = check_dataset(root)
    assert not r.ok
    errors = "\n".join(r.errors)
    assert f"without a mask file in {root / 'masks'}" in errors and train[1] in errors
    assert f"{test[2]}.png cannot be decoded" in errors
    assert "split 'train' and split 'test' share 1 id" in errors and train[0] in errors
    assert "split 'train': 1 id without an image" in errors and "ghost" in errors
    assert "split 'train': 2 ids without a mask file" in errors  # train[1] and ghost
    assert len(r.errors) == 4
    warnings = "\n".join(r.warnings)
    assert "extra" in warnings and "in no split" in warnings
    assert f"{test[1]}.png is 300x280 (WxH) but its image is 256x256" in warnings
    assert "notes.txt" in warnings and "without a mask: extra" in warnings
    assert len(r.warnings) == 4
    text = format_report(r)
    assert text.index("warnings (4)") < text.index("errors (4)") < text.index("FAILED")


def test_missing_root_and_split_files(tmp_path: Path, synth_root: Path, copy_dataset) -> None:
    with pytest.raises(DatasetError, match=rf"dataset root {tmp_path / 'nope'} not found"):
        check_dataset(tmp_path / "nope")
    root = copy_dataset(synth_root, ["synth_00001"], ["synth_00002"])
    (root / "train.txt").unlink()
    (root / "test.txt").write_text("")
    r = check_dataset(root)
    errors = "\n".join(r.errors)
    assert str(root / "train.txt") in errors and "lists no ids" in errors
    assert r.n_decoded == 2  # the files are still checked
    shutil.rmtree(root / "images")
    (root / "test.txt").unlink()
    r = check_dataset(root)
    assert any("no split files" in e for e in r.errors)
    assert any(f"images folder {root / 'images'} not found" in e for e in r.errors)


def test_basicirstd_layout_check(synth_root: Path, copy_dataset) -> None:
    root = copy_dataset(synth_root, ["synth_00001", "synth_00002"], ["synth_00003"], name="BX")
    (root / "img_idx").mkdir()
    for s in ("train", "test"):
        (root / f"{s}.txt").rename(root / "img_idx" / f"{s}_BX.txt")
    r = check_dataset(root)
    assert r.ok and r.layout == "basicirstd" and r.splits == {"train": 2, "test": 1}


def test_nonbinary_mask_warning(synth_root: Path, copy_dataset) -> None:
    root = copy_dataset(synth_root, ["synth_00001"], ["synth_00002"])
    m = np.zeros((256, 256), np.uint8)
    m[10:13, 10:13] = 200
    m[11, 11] = 255
    cv2.imwrite(str(root / "masks" / "synth_00001.png"), m)
    r = check_dataset(root)
    assert r.ok and len(r.warnings) == 1
    assert "1 mask with values other than 0 and 255" in r.warnings[0]


@pytest.mark.slow  # the larger real dataset; test_real_nuaa_full stays fast
def test_real_nudt_full(nudt_root: Path) -> None:
    t = time.perf_counter()
    r = check_dataset(nudt_root)
    elapsed = time.perf_counter() - t
    assert r.ok, r.errors
    assert r.warnings == []
    assert r.n_images == r.n_masks == r.n_decoded == 1327
    assert r.splits == {"train": 663, "test": 664}
    assert r.n_sizes == 1 and r.height_range == r.width_range == (256, 256)
    assert r.n_empty == 0 and r.n_targets >= 1327
    assert elapsed < 30


def test_real_nuaa_full(nuaa_root: Path) -> None:
    r = check_dataset(nuaa_root)
    assert r.ok, r.errors
    assert r.n_images == r.n_masks == 427
    assert r.splits == {"train": 213, "test": 214}
    assert len(r.warnings) == 1 and "Misc_111" in r.warnings[0]
    assert r.n_sizes == 381
    assert r.height_range == (96, 388) and r.width_range == (135, 456)
    assert r.modes == {"RGB": 379, "L": 28, "RGBA": 15, "P": 5}
    text = format_report(r)
    assert "Misc_111" in text and "result: OK" in text


def test_unknown_layout(synth_root: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset layout 'voc'"):
        check_dataset(synth_root, layout="voc")


def test_report_to_dict_is_json(synth_root: Path) -> None:
    r = check_dataset(synth_root)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ok"] is True and d["root"] == str(synth_root)
    assert d["splits"] == r.splits and d["height_range"] == [256, 256]
    assert sum(d["targets_per_image"].values()) == 24
