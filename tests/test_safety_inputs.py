"""Issue 11, findings 4, 10 and 11 (the parts outside the CLI and the engine): inputs that
were read wrongly or accepted silently, and messages that did not name their key or file.

- 4: 16-bit masks and predictions holding 0/255, 0/65535 or 0/1 read by value range; a split
  without any target is a ``data check`` warning (and :func:`irkd.data.require_targets`
  an error for training to call);
- 10: negative/zero learning rates, ``score`` thresholds outside (0, 1), duplicate YAML keys
  and NaN/Inf weights are refused with one line naming the key;
- 11: seeds out of range, a non-UTF-8 config, a teacher checkpoint of another network, a
  corrupt prediction PNG: one line naming the key, the file or the network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from irkd.config import ConfigError, config_from_dict, load_config
from irkd.data import DatasetError, IRSTDDataset, check_dataset, require_targets, synthesize
from irkd.data.io import read_mask, write_png
from irkd.metrics.score import PredictionError, score_predictions
from irkd.weights import WeightsError, save_neutral


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "ds", 8, seed=0, size=64)


def _masks_as(root, scale, dtype=np.uint16, split=None):
    """Rewrite the masks (of a split, or all) as ``dtype`` holding 0/``scale``."""
    ids = IRSTDDataset(root, split).ids if split else [p.stem for p in (root / "masks").iterdir()]
    for i in ids:
        p = root / "masks" / f"{i}.png"
        write_png(p, (read_mask(p) * scale).astype(dtype))


# ----------------------------------------------------------------------------- finding 4


@pytest.mark.parametrize(("scale", "dtype"), [(255, np.uint16), (65535, np.uint16), (1, np.uint16),
                                              (1, np.uint8), (255, np.uint8)])  # fmt: skip
def test_masks_read_by_value_range_not_by_pixel_type(tmp_path, scale, dtype):
    ref = np.zeros((8, 8), np.uint8)
    ref[2:4, 3:6] = 1
    p = tmp_path / "m.png"
    write_png(p, (ref * scale).astype(dtype))
    assert np.array_equal(read_mask(p), ref)


def test_a_soft_16bit_mask_keeps_its_half_range_threshold(tmp_path):
    m = np.array([[0, 200, 40000, 65535]], np.uint16)
    write_png(tmp_path / "m.png", m)
    assert read_mask(tmp_path / "m.png").tolist() == [[0, 0, 1, 1]]


def test_data_check_counts_16bit_targets_and_warns_on_a_split_without_any(tmp_path, data):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(data, root)
    before = check_dataset(root)
    _masks_as(root, 255)  # every mask now 16-bit 0/255
    report = check_dataset(root)
    assert report.n_targets == before.n_targets > 0 and report.split_targets["test"] > 0
    assert not [w for w in report.warnings if "no target" in w]
    for i in IRSTDDataset(root, "test").ids:  # the test split loses every target
        write_png(root / "masks" / f"{i}.png", np.zeros((64, 64), np.uint16))
    report = check_dataset(root)
    assert report.split_targets["test"] == 0 and report.ok
    assert any("split 'test' has no target at all" in w for w in report.warnings)
    with pytest.raises(DatasetError, match="split 'test' of .* has no target at all"):
        require_targets(IRSTDDataset(root, "test"))
    assert require_targets(IRSTDDataset(root, "train"))


def _predictions(root, out, scale, dtype):
    out.mkdir()
    ds = IRSTDDataset(root, "test")
    for i in ds.ids:
        write_png(out / f"{i}.png", (ds.load(i).mask * scale).astype(dtype))
    return out


@pytest.mark.parametrize(("scale", "dtype"), [(255, np.uint16), (65535, np.uint16), (1, np.uint16),
                                              (1, np.uint8)])  # fmt: skip
def test_16bit_and_label_predictions_score_like_8bit_ones(tmp_path, data, scale, dtype):
    ref = score_predictions(_predictions(data, tmp_path / "ref", 255, np.uint8), data)
    got = score_predictions(_predictions(data, tmp_path / "p", scale, dtype), data)
    assert ref["iou"] == got["iou"] == 1.0 and ref["pd"] == got["pd"] == 1.0
    assert got["pred_range"] == {np.dtype(dtype).name: float(scale)}


def test_a_soft_8bit_map_without_detection_keeps_the_folder_range(tmp_path, data):
    pred = _predictions(data, tmp_path / "p", 255, np.uint8)
    first = sorted(pred.iterdir())[0]
    write_png(first, np.ones((64, 64), np.uint8))  # p = 1/255 everywhere: no target
    result = score_predictions(pred, data)
    assert result["pred_range"] == {"uint8": 255.0} and result["fa"] == 0.0


def test_a_corrupt_prediction_names_the_prediction_not_the_dataset(tmp_path, data):
    pred = _predictions(data, tmp_path / "p", 255, np.uint8)
    bad = sorted(pred.iterdir())[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PredictionError, match=f"prediction file {bad} cannot be read") as exc:
        score_predictions(pred, data)
    assert "split files" not in str(exc.value)


# ----------------------------------------------------------------------------- finding 10


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"optim": {"lr": 0.0}}, "optim.lr"),
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"optim": {"lr": math.inf}}, "optim.lr"),
        ({"schedule": {"min_lr": -1.0}}, "schedule.min_lr"),
        ({"schedule": {"gamma": -5.0}}, "schedule.gamma"),
        ({"schedule": {"gamma": 0.0}}, "schedule.gamma"),
        ({"optim": {"weight_decay": -1e-4}}, "optim.weight_decay"),
        ({"optim": {"momentum": 1.5}}, "optim.momentum"),
        ({"optim": {"lr": 1e-4}, "schedule": {"min_lr": 1e-3}}, "schedule.min_lr"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
    ],
)
def test_silently_wrong_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: ") as exc:
        config_from_dict(override)
    assert "\n" not in str(exc.value)


def test_edge_values_stay_valid():
    cfg = config_from_dict({"seed": 2**32 - 1, "schedule": {"min_lr": 0.0, "gamma": 1.0}})
    assert cfg.seed == 2**32 - 1 and cfg.schedule.min_lr == 0.0


def test_cli_overrides_are_checked_too(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    with pytest.raises(ConfigError, match="schedule.gamma"):
        load_config(p, ["schedule.gamma=-5"])
    with pytest.raises(ConfigError, match="^seed: "):
        load_config(p, ["seed=-1"])


def test_duplicate_yaml_keys_are_refused_with_key_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\noptim:\n  lr: 1.0e-3\n  name: sgd\n  lr: 5.0e-3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 5 \(first at line 3\)"):
        load_config(p)
    p.write_text("seed: 1\nname: x\nseed: 2\n")
    with pytest.raises(ConfigError, match=f"{p}: duplicate key 'seed' at line 3"):
        load_config(p)
    p.write_text("base: &b {lr: 1.0e-3}\noptim:\n  <<: *b\n  lr: 2.0e-3\n")  # merge + override
    with pytest.raises(ConfigError, match="unknown key base"):  # not a duplicate
        load_config(p)


@pytest.mark.parametrize("threshold", [2.0, 0.0, 1.0, -0.5, math.nan])
def test_score_threshold_outside_0_1_is_refused(data, tmp_path, threshold):
    with pytest.raises(PredictionError, match=r"threshold .* is not a probability in \(0, 1\)"):
        score_predictions(tmp_path, data, threshold=threshold)


def _state(network="dnanet_xxs"):
    import torch

    from torch_ref.models import create_model
    from torch_ref.weights import net_to_neutral

    torch.manual_seed(0)
    return net_to_neutral(create_model(network))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_weights_convert_refuses_nan_and_inf(tmp_path, capsys, bad):
    from irkd.cli import main

    arrays = _state()
    name = sorted(k for k in arrays if k.endswith("weight"))[3]
    arrays[name].flat[1] = bad
    src = tmp_path / "w.safetensors"
    save_neutral(src, arrays, network="dnanet_xxs")
    for dst in ("w.pt", "w2.safetensors"):
        rc = main(["weights", "convert", str(src), str(tmp_path / dst), "--network", "dnanet_xxs"])
        err = capsys.readouterr().err
        assert rc == 1 and f"NaN or infinite values in 1 tensor(s): {name} (1 of" in err
        assert err.count("\n") == 1 and not (tmp_path / dst).exists()


def test_weights_convert_from_pt_refuses_nan(tmp_path):
    import torch

    from torch_ref.weights import pt_to_neutral

    arrays = _state()
    name = sorted(arrays)[0]
    arrays[name].flat[0] = math.nan
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=f"NaN or infinite values .*{name}"):
        pt_to_neutral(tmp_path / "w.pt", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ----------------------------------------------------------------------------- finding 11


def test_a_non_utf8_config_names_the_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"config file {p} is not UTF-8 text") as exc:
        load_config(p)
    assert "\n" not in str(exc.value)


def test_a_teacher_checkpoint_of_another_network_names_that_network(tmp_path):
    from torch_ref.predict import load_network

    src = tmp_path / "teacher.safetensors"
    save_neutral(src, _state("dnanet_s"), network="dnanet_s", metadata={"kwargs": {}})
    with pytest.raises(WeightsError) as exc:
        load_network("dnanet_xxs", src)
    msg = str(exc.value)
    assert f"weights file {src} holds a 'dnanet_s' network" in msg and "not 'dnanet_xxs'" in msg
    assert len(msg) < 300 and "conv0_0" not in msg


@pytest.mark.parametrize("backend", ["pytorch", "mindspore"])
def test_a_teacher_of_another_network_names_the_key_and_the_network(tmp_path, backend):
    if backend == "mindspore":
        import ms_impl  # noqa: F401
        from ms_impl.train import load_teacher
    else:
        from torch_ref.train import load_teacher
    src = tmp_path / "teacher.safetensors"
    save_neutral(src, _state("dnanet_s"), network="dnanet_s")
    cfg = config_from_dict({"teacher": {"name": "dnanet_xxs", "checkpoint": str(src)}})
    with pytest.raises(WeightsError) as exc:
        load_teacher(cfg)
    msg = str(exc.value)
    assert msg.startswith("teacher.checkpoint: weights file") and len(msg) < 300
    assert "holds a 'dnanet_s' network" in msg and "not 'dnanet_xxs'" in msg


def test_a_mismatch_without_a_stored_name_lists_a_few_tensors_only(tmp_path):
    from torch_ref.predict import load_network

    src = tmp_path / "anon.safetensors"
    save_neutral(src, _state("dnanet_s"))
    with pytest.raises(WeightsError) as exc:
        load_network("dnanet_xxs", src)
    assert "more)" in str(exc.value) and len(str(exc.value)) < 3000
