from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from irkd.data import (
    IRSTDDataset,
    TrainBatches,
    compute_mean_std,
    crop_back,
    iter_eval,
    read_gray,
    split_train_val,
)


def test_split_train_val() -> None:
    ids = [f"id{i}" for i in range(50)]
    train, val = split_train_val(ids, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert train == [i for i in ids if i in set(train)]  # input order kept
    assert split_train_val(ids, 0.2, seed=3) == (train, val)
    assert split_train_val(ids, 0.2, seed=4)[1] != val
    assert split_train_val(ids, 0.0, seed=3) == (ids, [])
    t, v = split_train_val(["a", "b"], 0.01, seed=0)
    assert len(v) == 1 and len(t) == 1
    t, v = split_train_val(["a", "b", "c"], 0.99, seed=0)
    assert len(v) == 2 and len(t) == 1
    assert split_train_val(["a"], 0.5, seed=0) == (["a"], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(ids, 1.0, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        split_train_val(["a", "a"], 0.5, seed=0)


def test_compute_mean_std_exact(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    pixels = np.concatenate([read_gray(ds.image_path(i)).ravel() for i in ds.ids])
    mean, std = compute_mean_std(ds)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(pixels.mean(dtype=np.float64), rel=1e-12)
    assert std == pytest.approx(pixels.std(dtype=np.float64), rel=1e-9)
    m2, _ = compute_mean_std(ds, ids=ds.ids[:1])
    assert m2 == pytest.approx(read_gray(ds.image_path(ds.ids[0])).mean())


def _batches(ds: IRSTDDataset, **kw) -> TrainBatches:
    args = dict(batch_size=4, crop=64, mean=100.0, std=20.0, seed=11)
    args.update(kw)
    return TrainBatches(ds, ds.ids, **args)


def test_train_batches_shapes(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    n = len(ds)
    tb = _batches(ds)
    assert len(tb) == n // 4
    batches = list(tb.epoch(0))
    assert len(batches) == len(tb)
    for x, m in batches:
        assert x.shape == m.shape == (4, 1, 64, 64)
        assert x.dtype == m.dtype == np.float32
        assert set(np.unique(m).tolist()) <= {0.0, 1.0}
    # normalised: the raw images' mean is ~100 on these images, so values are O(1)
    assert abs(float(np.mean([x.mean() for x, _ in batches]))) < 5
    tb2 = _batches(ds, batch_size=5, drop_last=False)
    sizes = [x.shape[0] for x, _ in tb2.epoch(0)]
    assert len(tb2) == len(sizes) == -(-n // 5) and sum(sizes) == n


def test_train_batches_cover_each_id_once(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    tb = _batches(ds, batch_size=1, crop=256, target_bias=0.0, mean=0.0, std=1.0)
    seen = []
    for x, _ in tb.epoch(2):
        img = x[0, 0]
        # undo the dihedral transform by matching the pixel sum of candidates
        seen.append(next(i for i in ds.ids if np.isclose(img.sum(), ds.load(i).image.sum())))
    assert sorted(seen) == sorted(ds.ids)


def test_train_batches_determinism_and_resume(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    a = _batches(ds)
    e0 = list(a.epoch(0))
    e1 = list(a.epoch(1))
    b = _batches(ds)  # fresh object, epoch 1 first: as after a resume
    e1b = list(b.epoch(1))
    e1c = list(a.epoch(1))
    for (x, m), (xb, mb), (xc, mc) in zip(e1, e1b, e1c, strict=True):
        assert np.array_equal(x, xb) and np.array_equal(m, mb)
        assert np.array_equal(x, xc) and np.array_equal(m, mc)
    assert not all(np.array_equal(x0, x1) for (x0, _), (x1, _) in zip(e0, e1, strict=True))
    other_seed = list(_batches(ds, seed=12).epoch(1))
    assert not np.array_equal(other_seed[0][0], e1[0][0])


def test_train_batches_target_bias(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    with_target = [i for i in ds.ids if ds.load(i).mask.any()]
    tb = TrainBatches(
        ds, with_target, batch_size=2, crop=32, mean=0.0, std=1.0, seed=0, target_bias=1.0
    )
    for e in range(3):
        for _, m in tb.epoch(e):
            assert np.all(m.reshape(m.shape[0], -1).max(axis=1) == 1)


def test_train_batches_bad_arguments(synth_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "train")
    with pytest.raises(ValueError, match="no batch"):
        _batches(ds, batch_size=len(ds) + 1)
    with pytest.raises(ValueError, match="not in split"):
        TrainBatches(ds, ["nope"], batch_size=1, crop=8, mean=0, std=1, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        next(_batches(ds).epoch(-1))


def test_iter_eval(synth_root: Path, nuaa_root: Path) -> None:
    ds = IRSTDDataset(synth_root, "test")
    out = list(iter_eval(ds, mean=100.0, std=20.0))
    assert [o[0] for o in out] == ds.ids
    id_, x, m, hw = out[0]
    assert x.shape == (1, 1, 256, 256) and x.dtype == np.float32
    assert m.shape == hw == (256, 256) and m.dtype == np.uint8
    expected = (ds.load(id_).image.astype(np.float32) - 100.0) / 20.0
    assert np.allclose(x[0, 0], expected, atol=1e-5)

    nuaa = IRSTDDataset(nuaa_root, "test")
    nuaa.ids = nuaa.ids[:5]
    for id_, x, m, (h, w) in iter_eval(nuaa, mean=0.0, std=1.0, multiple=32):
        assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
        assert m.shape == (h, w)
        assert np.array_equal(crop_back(x, (h, w))[0, 0], nuaa.load(id_).image.astype(np.float32))
        assert np.all(x[..., h:, :] == 0) and np.all(x[..., :, w:] == 0)
