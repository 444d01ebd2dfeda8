"""Issue 11, findings 8-11 (the engine and CLI parts): fail before training with one line,
resume from anything a crash leaves, and say what changed.

- 8: an unknown network or constructor argument, an output path that cannot be written, a
  corrupt checkpoint on resume (fall back to the newest intact one and say so);
- 9: the test split, train/test overlap and a crop larger than the images are checked at
  start, and a run that cannot start leaves no folder behind;
- 10: a resume that changes ``schedule.epochs`` or ``data.root`` records it; ``data.root`` is
  stored resolved, so a run resumes from any folder, and can be pointed at a moved dataset;
- 11: a truncated ``state.json``; a diverged run names the epoch, the loss terms and the
  likely cause.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_engine import NumpyTrainer

from irkd.cli import main
from irkd.config import ConfigError, config_from_dict, load_config
from irkd.data import DatasetError, synthesize
from irkd.engine import NonFiniteLossError, run_training
from irkd.rundir import RunFolderError
from irkd.runlog import read_jsonl


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("start") / "S", 16, seed=0, size=64)


def _cfg(root, **over):
    d = {
        "name": "np",
        "data": {"root": str(root), "crop": 32, "batch_size": 2, "val_fraction": 0.25},
        "schedule": {"epochs": 3, "steps_per_epoch": 2, "warmup_epochs": 0},
        "train": {"log_every": 1, "keep_last": 3},
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            d.setdefault(section, {})[name] = value
        else:
            d[key] = value
    return config_from_dict(d)


def _weights(run: Path) -> np.ndarray:
    return np.load(run / "checkpoints" / "last" / "w.npy")


# ----------------------------------------------------------------------------- finding 8


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"model": {"name": "dnanet_xxxs"}}, "model.name: unknown network 'dnanet_xxxs'"),
        ({"model": {"name": "dnanet_xxs", "kwargs": {"foo": 3}}}, "model.kwargs.foo"),
        ({"model": {"name": "unet_s", "kwargs": {"nb_filter": [1]}}}, "takes no keyword"),
        ({"teacher": {"name": "dnanet_xl"}}, "teacher.name: unknown network"),
    ],
)
def test_an_unknown_network_or_argument_is_refused_at_load(override, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        config_from_dict(override)


def test_the_zoo_kwargs_are_those_of_both_frameworks():
    """The framework-free list that config loading checks equals both constructors'."""
    import inspect

    import ms_impl.models as msm
    import torch_ref.models as tm
    from irkd.zoo import FAMILY_KWARGS

    for side in (tm, msm):
        for family, cls in side._FAMILIES.items():
            params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
            assert tuple(params) == FAMILY_KWARGS[family], (side.__name__, family)


def test_cli_unknown_network_is_one_line_and_writes_nothing(root, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{root: {root}}}\nmodel: {{name: dnanet_xxxs}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("irkd: error: ") and "Traceback" not in err
    assert "c.yaml: model.name: unknown network" in err
    assert not (tmp_path / "r").exists()
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"")
    assert main(["weights", "convert", "--network", "foo", str(src), str(tmp_path / "o.pt")]) == 1
    assert "--network: unknown network 'foo'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("file/x.json", "a file stands where a folder is expected"),
        ("folder", "it is a folder, a file is expected there"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_one_line(root, tmp_path, capsys, target, why):
    (tmp_path / "file").write_text("mine\n")
    (tmp_path / "folder").mkdir()
    assert main(["data", "check", str(root), "--json", str(tmp_path / target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("irkd: error: cannot use") and why in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "mine\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_os_error_line_names_the_destination_not_the_temporary_file():
    import errno

    from irkd.cli.common import os_error_line

    exc = IsADirectoryError(errno.EISDIR, "Is a directory", "/a/.out.json.x1y2.tmp", None, "/a/o")
    assert os_error_line(exc) == "cannot use /a/o: it is a folder, a file is expected there"
    assert os_error_line(PermissionError(errno.EACCES, "denied", "/ro/.r.json.ab.tmp")) == (
        "cannot use /ro/r.json: permission denied"
    )
    assert os_error_line(FileExistsError("our own message")) == "our own message"


@pytest.mark.parametrize("broken", ["w.npy", "state.json"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(root, tmp_path, broken, capsys):
    """A corrupt weights/optimizer file or a truncated state.json in checkpoints/last:
    resume from checkpoints/epoch_NNNN, say so, keep the broken folder; same end result."""
    cfg = _cfg(root)
    ref = tmp_path / "ref"
    run_training(cfg, ref, lambda: NumpyTrainer(cfg), quiet=True)
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=2)
    target = run / "checkpoints" / "last" / broken
    target.write_bytes(target.read_bytes()[:10])  # truncated by a crash or a full disk
    res = run_training(cfg, run, lambda: NumpyTrainer(cfg), resume=True)
    err = capsys.readouterr().err
    assert "cannot be read" in err and "resuming from" in err and "epoch_0001" in err
    assert res["state"]["epoch"] == 3
    np.testing.assert_array_equal(_weights(run), _weights(ref))
    broken_dirs = list((run / "checkpoints").glob("broken-last-*"))
    assert len(broken_dirs) == 1 and (broken_dirs[0] / broken).stat().st_size == 10
    epochs = [r["epoch"] for r in read_jsonl(run / "log.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]  # epoch 2 trained again, logged once


def test_resume_with_no_readable_checkpoint_is_one_line(root, tmp_path):
    cfg = _cfg(root, train__keep_last=1)
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    (run / "checkpoints" / "last" / "state.json").write_text('{"epoch": 1, "st')
    with pytest.raises(RunFolderError, match="no checkpoint in .* can be read: last"):
        run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, resume=True)


# ----------------------------------------------------------------------------- finding 9


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst


def test_train_test_overlap_is_refused_before_anything_is_written(root, tmp_path):
    data = _copy(root, tmp_path)
    test_ids = (data / "test.txt").read_text().split()
    with (data / "train.txt").open("a") as f:
        f.write("\n".join(test_ids[:2]) + "\n")
    cfg = _cfg(data)
    with pytest.raises(DatasetError, match="2 ids .* in both the train and the test split"):
        run_training(cfg, tmp_path / "r", lambda: NumpyTrainer(cfg), quiet=True)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_corrupt_mask_fails_at_start_naming_the_file(root, tmp_path, split):
    data = _copy(root, tmp_path)
    last = (data / f"{split}.txt").read_text().split()[-1]
    (data / "masks" / f"{last}.png").write_bytes(b"\x89PNG broken")
    cfg = _cfg(data)
    built = []
    with pytest.raises(DatasetError, match=f"{last}.png"):
        run_training(cfg, tmp_path / "r", lambda: built.append(1) or NumpyTrainer(cfg), quiet=True)
    assert not built and not (tmp_path / "r").exists()  # before the trainer, nothing written


def test_a_missing_test_split_fails_at_start(root, tmp_path):
    data = _copy(root, tmp_path)
    (data / "test.txt").write_text("")
    cfg = _cfg(data)
    with pytest.raises(DatasetError, match="test.txt lists no ids"):
        run_training(cfg, tmp_path / "r", lambda: NumpyTrainer(cfg), quiet=True)


def test_a_crop_larger_than_the_images_is_refused(root, tmp_path, capsys):
    cfg = _cfg(root, data__crop=4096)
    with pytest.raises(ConfigError, match=r"data.crop: 4096 is larger .* 64x64.*<= 64"):
        run_training(cfg, tmp_path / "r", lambda: NumpyTrainer(cfg), quiet=True)
    assert not (tmp_path / "r").exists()


def test_a_failed_start_in_an_existing_empty_folder_leaves_it_empty(root, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    cfg = _cfg(root)

    def broken():
        raise ValueError("teacher checkpoint of another network")

    with pytest.raises(ValueError, match="another network"):
        run_training(cfg, out, broken, quiet=True)
    assert out.is_dir() and not any(out.iterdir())
    run_training(cfg, out, lambda: NumpyTrainer(cfg), quiet=True)  # the fixed run starts there


# ----------------------------------------------------------------------------- finding 10


def test_resume_records_a_changed_epoch_count_and_a_moved_dataset(
    root, tmp_path, monkeypatch, capsys
):
    data = _copy(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = _cfg("data")  # relative
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    saved = load_config(run / "config.yaml")
    assert saved.data.root == str(data.resolve())  # stored resolved
    # from another folder, the saved config resumes as it is
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_training(saved, run, lambda: NumpyTrainer(saved), quiet=True, resume=True, stop_after=2)
    # the dataset moves; the resume points at it and runs longer: both recorded
    moved = tmp_path / "moved"
    data.rename(moved)
    again = _cfg(moved, schedule__epochs=4)
    run_training(again, run, lambda: NumpyTrainer(again), resume=True)
    recs = [r for r in read_jsonl(run / "log.jsonl") if r["kind"] == "resume"]
    assert recs == [
        {
            "kind": "resume",
            "after_epoch": 2,
            "changed": {"schedule.epochs": [3, 4], "data.root": [str(data), str(moved)]},
        }
    ]
    assert "resumed with schedule.epochs 3 -> 4" in capsys.readouterr().err
    assert load_config(run / "config.yaml").data.root == str(moved)


def test_resume_with_another_changed_field_is_refused(root, tmp_path):
    cfg = _cfg(root)
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    before = (run / "config.yaml").read_text()
    other = _cfg(root, optim={"lr": 0.5})
    with pytest.raises(ConfigError, match="differs from .* in optim"):
        run_training(other, run, lambda: NumpyTrainer(other), quiet=True, resume=True)
    assert (run / "config.yaml").read_text() == before


def test_resume_with_the_same_weights_under_another_path_is_allowed(root, tmp_path):
    """A run folder linked into another study: its weights' paths differ, not the files."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    (tmp_path / "study_a").mkdir()
    (tmp_path / "study_b").mkdir()
    (tmp_path / "study_a" / "w.safetensors").symlink_to(weights)
    (tmp_path / "study_b" / "w.safetensors").symlink_to(weights)
    cfg = _cfg(root, model={"checkpoint": str(tmp_path / "study_a" / "w.safetensors")})
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    linked = _cfg(root, model={"checkpoint": str(tmp_path / "study_b" / "w.safetensors")})
    run_training(linked, run, lambda: NumpyTrainer(linked), quiet=True, resume=True, stop_after=2)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"w")  # same bytes, another file: another start
    moved = _cfg(root, model={"checkpoint": str(other)})
    with pytest.raises(ConfigError, match="differs from .* in model"):
        run_training(moved, run, lambda: NumpyTrainer(moved), quiet=True, resume=True)


# ----------------------------------------------------------------------------- finding 11


def test_a_diverged_run_names_epoch_terms_and_cause(root, tmp_path):
    """The loss stays finite, the weights overflow: the message is not a metric's error."""

    class Overflows(NumpyTrainer):
        def step(self, *a, **k):
            values = super().step(*a, **k)
            self.w = np.array([np.inf, 0.0])
            return values

    cfg = _cfg(root, train__keep_last=1, schedule__steps_per_epoch=1)
    with pytest.raises(NonFiniteLossError) as info:
        run_training(cfg, tmp_path / "r", lambda: Overflows(cfg), quiet=True)
    msg = str(info.value)
    assert "diverged" in msg and "validation after epoch 1, step 1" in msg
    assert "loss=" in msg and "optim.lr" in msg and "no checkpoint had been written" in msg
    assert "prob contains" not in msg


def test_study_results_name_the_dataset_relative_to_the_repository(tmp_path, monkeypatch):
    from irkd.study.results import portable_config

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"name: x\ndata:\n  root: {tmp_path.parent / 'shared' / 'D'}\n")
    assert json.dumps(portable_config(cfg)).count("../shared/D") == 1


def test_a_config_that_does_not_fit_a_good_checkpoint_moves_nothing(root, tmp_path):
    """Only unreadable checkpoints are set aside, never a good one the config does not fit."""
    cfg = _cfg(root)
    run = tmp_path / "run"
    run_training(cfg, run, lambda: NumpyTrainer(cfg), quiet=True, stop_after=2)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    class Refuses(NumpyTrainer):
        def read(self, folder):
            raise ConfigError("train.ema=0.9 needs the weight average, not in this checkpoint")

    with pytest.raises(ConfigError, match="weight average"):
        run_training(cfg, run, lambda: Refuses(cfg), quiet=True, resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
