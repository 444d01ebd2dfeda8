"""irkd.engine and the modules it drives (data preparation, schedule, run folder, log,
evaluation, atomic files): framework-free training machinery (no torch, no mindspore)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from irkd.config import ExperimentConfig, config_from_dict, load_config
from irkd.data import IRSTDDataset, compute_mean_std, synthesize
from irkd.data.prepare import prepare_data, resolve_dataset
from irkd.engine import NonFiniteLossError, check_finite, run_training
from irkd.evaluate import choose_ids, evaluate_predictions, evaluate_split, predict_split, sigmoid
from irkd.files import atomic_dir
from irkd.rundir import RunDir, TrainState
from irkd.runlog import JsonlLogger, read_jsonl
from irkd.schedule import lr_at, noise_for, steps_per_epoch


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("eng") / "S", 16, seed=0, size=64)


def _cfg(**data):
    return config_from_dict({"data": {"crop": 32, "batch_size": 4, **data}})


# ----------------------------------------------------------------------------- schedule


def test_lr_warmup_then_cosine_to_min_lr():
    cfg = config_from_dict(
        {
            "optim": {"lr": 1e-3},
            "schedule": {"epochs": 10, "warmup_epochs": 2, "min_lr": 1e-5, "scheduler": "cosine"},
        }
    )
    spe = 5
    lr = [lr_at(s, spe, cfg.optim, cfg.schedule) for s in range(50)]
    assert lr[0] == pytest.approx(1e-3 / 10)
    assert lr[9] == pytest.approx(1e-3)  # last warm-up step reaches the peak
    assert lr[10] == pytest.approx(1e-3)  # cosine starts at the peak
    mid = 10 + 20  # half of the 40 cosine steps
    assert lr[mid] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))
    assert lr[-1] > 1e-5 and lr[-1] == pytest.approx(
        1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 39 / 40))
    )


def test_lr_step_and_constant():
    cfg = config_from_dict(
        {"optim": {"lr": 0.1}, "schedule": {"scheduler": "step", "step_epochs": 3, "gamma": 0.5}}
    )
    assert lr_at(0, 4, cfg.optim, cfg.schedule) == pytest.approx(0.1)
    assert lr_at(11, 4, cfg.optim, cfg.schedule) == pytest.approx(0.1)  # epoch 2
    assert lr_at(12, 4, cfg.optim, cfg.schedule) == pytest.approx(0.05)  # epoch 3
    assert lr_at(24, 4, cfg.optim, cfg.schedule) == pytest.approx(0.025)
    cfg.schedule.scheduler = "constant"
    assert lr_at(999, 4, cfg.optim, cfg.schedule) == 0.1
    with pytest.raises(ValueError):
        lr_at(-1, 4, cfg.optim, cfg.schedule)


def test_steps_per_epoch_cap():
    cfg = ExperimentConfig()
    assert steps_per_epoch(10, cfg.schedule) == 10
    cfg.schedule.steps_per_epoch = 3
    assert steps_per_epoch(10, cfg.schedule) == 3


# ----------------------------------------------------------------------------- noise, NaN


def test_noise_for_is_deterministic_and_skips_empty_shapes():
    a = noise_for(3, 10, [(2, 1, 4, 4), (), (2, 1, 2, 2)])
    b = noise_for(3, 10, [(2, 1, 4, 4), (2, 1, 2, 2)])
    assert a[0].dtype == np.float32 and a[0].shape == (2, 1, 4, 4)
    assert a[1].shape == () and a[1] == 0
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[1])  # an empty stage draws nothing
    assert 0.0 <= a[0].min() and a[0].max() < 1.0
    c = noise_for(3, 11, [(2, 1, 4, 4)])
    assert not np.array_equal(a[0], c[0])
    expected = np.random.default_rng([3, 10, 7]).random((2, 1, 4, 4), dtype=np.float32)
    np.testing.assert_array_equal(a[0], expected)


def test_check_finite_message(tmp_path):
    check_finite({"loss": 1.0, "task": 0.5}, where="epoch 1, step 1")
    last = tmp_path / "checkpoints" / "last"
    last.mkdir(parents=True)
    with pytest.raises(NonFiniteLossError) as exc:
        terms = {"loss": float("nan"), "task": 0.5, "kd": float("inf")}
        check_finite(terms, where="epoch 3, step 7", last_good=last)
    msg = str(exc.value)
    assert "epoch 3, step 7" in msg and "loss" in msg and "kd" in msg and str(last) in msg
    assert "\n" not in msg
    with pytest.raises(NonFiniteLossError, match="no checkpoint"):
        check_finite(float("nan"), where="epoch 1, step 1")


# ----------------------------------------------------------------------------- files


def test_atomic_dir_leaves_no_partial_folder(tmp_path):
    final = tmp_path / "ck" / "last"
    with atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"one")
    assert (final / "a.bin").read_bytes() == b"one"

    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"half")
        raise RuntimeError("writer died")
    assert (final / "a.bin").read_bytes() == b"one"  # old one untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["last"]  # no temp left

    with atomic_dir(final, keep_old=tmp_path / "ck" / "prev") as tmp:
        (tmp / "a.bin").write_bytes(b"two")
    assert (final / "a.bin").read_bytes() == b"two"
    assert (tmp_path / "ck" / "prev" / "a.bin").read_bytes() == b"one"


def test_atomic_dir_recovers_an_interrupted_swap(tmp_path):
    final = tmp_path / "last"
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("good")
    # Simulate a crash between the two renames: final moved aside, new one not in place.
    final.rename(tmp_path / ".last.old-abc")
    (tmp_path / ".last.tmp-def").mkdir()
    RunDir(tmp_path / "run")  # unrelated folder: nothing happens
    with atomic_dir(final) as tmp:
        assert (final / "x").read_text() == "good"  # recovered before writing
        (tmp / "x").write_text("new")
    assert (final / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "run"]


def test_train_state_round_trip():
    s = TrainState(epoch=3, step=42, best_score=0.61, best_epoch=2, extra={"k": [1, 2]})
    assert TrainState.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert TrainState.from_json(TrainState().to_json()) == TrainState()


def test_run_dir_layout_config_checkpoints_and_log(tmp_path):
    rd = RunDir(tmp_path / "run")
    cfg = config_from_dict({"name": "x", "optim": {"lr": 3e-4}, "method": {"stages": ["enc1"]}})
    rd.save_config(cfg)
    assert load_config(rd.config) == cfg
    assert rd.best.name == "best.safetensors" and rd.metrics.name == "metrics.json"

    def writer(folder: Path) -> None:
        (folder / "student.bin").write_bytes(b"w")

    for e in range(1, 5):
        rd.write_checkpoint(TrainState(epoch=e, step=10 * e), writer, keep_last=2)
    assert rd.read_state().epoch == 4
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == ["epoch_0003", "last"]

    with rd.logger() as log:
        for e in (1, 2, 3):
            log.log({"kind": "train", "epoch": e, "step": e, "loss": np.float32(0.5)})
            assert len(read_jsonl(rd.log)) == e  # flushed per record
        log.log({"kind": "start"})
    rd.trim_log(2)
    recs = rd.records()
    assert [r.get("epoch") for r in recs] == [1, 2, None]


def test_jsonl_logger_converts_nan_and_numpy(tmp_path):
    log = JsonlLogger(tmp_path / "l.jsonl")
    log.log({"a": np.float64("nan"), "b": np.int64(3)})
    log.close()
    assert read_jsonl(tmp_path / "l.jsonl") == [{"a": None, "b": 3}]


def test_read_state_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        RunDir(tmp_path / "r").read_state()


# ----------------------------------------------------------------------------- data


def test_resolve_dataset_generates_once(tmp_path):
    cfg = _cfg(synth_n=6)
    root = resolve_dataset(cfg.data, tmp_path, size=32)
    assert root == tmp_path / "synth-n6-s0-z32" and (root / "train.txt").is_file()
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert resolve_dataset(cfg.data, tmp_path, size=32) == root
    assert (root / "train.txt").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp folder left
    cfg.data.root = "/some/where"
    assert resolve_dataset(cfg.data, tmp_path) == Path("/some/where")


def test_prepare_data_selects_on_train_split_only(small_root):
    cfg = _cfg(root=str(small_root), val_fraction=0.25)
    data = prepare_data(cfg, "unused")
    train_txt = set((small_root / "train.txt").read_text().split())
    test_txt = set((small_root / "test.txt").read_text().split())
    assert set(data.val_ids) <= train_txt and set(data.train_ids) <= train_txt
    assert not set(data.val_ids) & set(data.train_ids)
    assert not set(data.val_ids) & test_txt
    assert set(data.val_set.ids) == set(data.val_ids)
    assert (data.mean, data.std) == compute_mean_std(data.train_set, data.train_ids)
    assert data.batches.ids == data.train_ids
    assert set(data.test_set().ids) == test_txt


# ----------------------------------------------------------------------------- evaluation


def test_sigmoid_is_safe():
    x = np.array([-1e4, 0.0, 1e4], np.float32)
    np.testing.assert_array_equal(sigmoid(x), np.array([0.0, 0.5, 1.0], np.float32))


def test_predict_split_crops_padding_and_scores(small_root):
    ds = IRSTDDataset(small_root, "test")
    calls = []

    def forward(x):
        calls.append(x.shape)
        return np.full(x.shape, -10.0, np.float32)

    preds = list(predict_split(ds, forward, mean=100.0, std=30.0, multiple=48))
    assert all(s == (1, 1, 96, 96) for s in calls)  # 64 padded to a multiple of 48
    assert all(p.shape == (64, 64) and p.dtype == np.float32 for _, p, _ in preds)
    res = evaluate_predictions(preds, keep=[ds.ids[0]])
    assert res["metrics"]["n_images"] == len(ds) and res["metrics"]["pd"] == 0.0
    assert list(res["kept"]) == [ds.ids[0]] and len(res["roc"]["pd"]) == 21


def test_evaluate_split_writes_report(small_root, tmp_path):
    ds = IRSTDDataset(small_root, "test")
    gt = {i: ds.load(i).mask for i in ds.ids}
    order = iter(ds.ids)

    def forward(x):  # perfect prediction from the GT of the image in iteration order
        m = gt[next(order)]
        out = np.full(x.shape, -10.0, np.float32)
        out[0, 0, : m.shape[0], : m.shape[1]][m > 0] = 10.0
        return out

    def msa(x):
        return {"enc1": np.ones(x.shape[-2:], np.float32)}

    ids = choose_ids(ds.ids, 2)
    rep = evaluate_split(
        ds,
        forward,
        mean=100.0,
        std=30.0,
        out_dir=tmp_path / "ev",
        sample_ids=ids,
        msa=msa,
        context={"network": "oracle"},
    )
    assert rep["iou"] == 1.0 and rep["pd"] == 1.0 and rep["fa"] == 0.0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["network"] == "oracle" and saved["split"] == "test" and saved["samples"] == ids
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 1000
    pngs = sorted(p.name for p in (tmp_path / "ev" / "samples").iterdir())
    assert pngs == sorted(f"{i}.png" for i in ids)
    with pytest.raises(ValueError, match="not in split"):
        evaluate_split(ds, forward, mean=0, std=1, out_dir=tmp_path / "x", sample_ids=["nope"])


def test_choose_ids_spreads():
    ids = [f"i{k}" for k in range(10)]
    assert choose_ids(ids, 3) == ["i0", "i4", "i9"] or choose_ids(ids, 3) == ["i0", "i5", "i9"]
    assert choose_ids(ids, 20) == ids and choose_ids(ids, 0) == []


# ----------------------------------------------------------------------------- the run


class NumpyTrainer:
    """A one-weight "network" (logits = w * x + b), enough to drive irkd.engine.run_training."""

    backend = "numpy"

    def __init__(self, cfg):
        self.cfg = cfg
        self.student_kwargs = {"k": 1}
        self.w = np.array([0.5, -1.0])
        self.training = False

    def train_mode(self):
        self.training = True

    def step(self, images, masks, step, lr, *, where, last_good=None):
        loss = float(np.mean((self.w[0] * images + self.w[1] - masks) ** 2))
        check_finite({"loss": loss}, where=where, last_good=last_good)
        self.w = self.w - lr * np.array([loss, 0.1 * (step + 1)])
        return {"loss": loss, "task": loss}

    def write(self, folder):
        np.save(folder / "w.npy", self.w)

    def read(self, folder):
        self.w = np.load(folder / "w.npy")

    def eval_forward(self):
        self.training = False
        w = self.w.copy()
        return lambda x: (w[0] * x + w[1]).astype(np.float32)

    def save_best(self, path, metadata):
        from irkd.weights import save_neutral

        save_neutral(path, {"w": self.w.astype(np.float32)}, metadata=metadata)

    def bare_forward(self, path):
        from irkd.weights import load_neutral

        w = load_neutral(path)[0]["w"]
        return lambda x: (w[0] * x + w[1]).astype(np.float32)

    def run_info(self):
        return {"threads": 1, "device": "numpy"}


def _run_cfg(root):
    return config_from_dict(
        {
            "name": "np",
            "data": {"root": str(root), "crop": 32, "batch_size": 2, "val_fraction": 0.25},
            "schedule": {"epochs": 3, "steps_per_epoch": 2, "warmup_epochs": 0},
            "train": {"log_every": 1, "keep_last": 2},
        }
    )


def test_run_training_drives_any_trainer_and_resumes_exactly(small_root, tmp_path):
    from irkd.weights import extra_metadata, load_neutral

    cfg = _run_cfg(small_root)
    straight = run_training(cfg, tmp_path / "a", lambda: NumpyTrainer(cfg), quiet=True)
    rd = RunDir(tmp_path / "a")
    for p in (rd.config, rd.log, rd.best, rd.best_json, rd.metrics, rd.last / "w.npy"):
        assert p.is_file(), p
    assert straight["state"]["epoch"] == 3 and straight["state"]["step"] == 6
    assert straight["metrics"]["n_images"] == len(IRSTDDataset(small_root, "test"))
    kinds = [r["kind"] for r in rd.records()]
    assert kinds == ["start"] + ["train", "train", "epoch", "val"] * 3
    start = rd.records()[0]
    assert start["backend"] == "numpy" and start["threads"] == 1 and start["device"] == "numpy"
    assert rd.read_state().extra["backend"] == "numpy"
    meta = extra_metadata(load_neutral(rd.best)[1])
    assert meta["backend"] == "numpy" and meta["kwargs"] == {"k": 1}
    assert meta["epoch"] == straight["best_epoch"]
    assert json.loads(rd.metrics.read_text())["best_epoch"] == straight["best_epoch"]
    # a second run in the same folder must be a resume
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(cfg, tmp_path / "a", lambda: NumpyTrainer(cfg), quiet=True)

    # stopped after one epoch, then resumed: the same weights, state and records
    stopped = run_training(cfg, tmp_path / "b", lambda: NumpyTrainer(cfg), quiet=True, stop_after=1)
    assert stopped["metrics"] is None and stopped["state"]["epoch"] == 1
    resumed = run_training(cfg, tmp_path / "b", lambda: NumpyTrainer(cfg), quiet=True, resume=True)
    assert resumed["state"] == straight["state"] and resumed["metrics"] == straight["metrics"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "a/checkpoints/last/w.npy"),
        np.load(tmp_path / "b/checkpoints/last/w.npy"),
    )
    timing = {"images_per_s", "train_s"}

    def strip(path):
        return [{k: v for k, v in r.items() if k not in timing} for r in RunDir(path).records()]

    assert strip(tmp_path / "a") == strip(tmp_path / "b")


def test_run_training_stops_on_a_non_finite_loss(small_root, tmp_path):
    cfg = _run_cfg(small_root)

    class Diverging(NumpyTrainer):
        def step(self, images, masks, step, lr, *, where, last_good=None):
            if step == 3:
                check_finite({"loss": float("nan")}, where=where, last_good=last_good)
            return super().step(images, masks, step, lr, where=where, last_good=last_good)

    with pytest.raises(NonFiniteLossError, match="epoch 2, step 4.*last good checkpoint"):
        run_training(cfg, tmp_path / "r", lambda: Diverging(cfg), quiet=True)
    assert RunDir(tmp_path / "r").read_state().epoch == 1


def test_engine_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, irkd.engine, irkd.evaluate, irkd.files, irkd.progress, irkd.rundir,"
        " irkd.runlog, irkd.schedule, irkd.data.prepare;"
        "assert 'torch' not in sys.modules and 'mindspore' not in sys.modules"
    )
    env = {**os.environ}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr


def test_echo_line_for_non_tty_logs():
    from irkd.runlog import echo_line

    line = echo_line(
        {"kind": "epoch", "epoch": 3, "mean_loss": 0.5, "train_s": 7.0, "images_per_s": 13.0}
    )
    assert line is not None and "epoch 3" in line and "loss 0.5000" in line
    assert echo_line({"kind": "val", "epoch": 2, "iou": 0.25}).endswith("val IoU 25.00%")
    assert echo_line({"kind": "train", "step": 1}) is None


def test_run_training_reports_last_epoch_and_wall_time_over_resume(small_root, tmp_path):
    from irkd.weights import extra_metadata, load_neutral

    cfg = _run_cfg(small_root)
    loaded = []

    class Recording(NumpyTrainer):
        def bare_forward(self, path):
            loaded.append(Path(path).name)
            return super().bare_forward(path)

    straight = run_training(cfg, tmp_path / "a", lambda: Recording(cfg), quiet=True)
    assert straight["best_epoch"] == 1  # this toy run's best is not its last epoch
    assert loaded == ["best.safetensors", "last.safetensors"]
    rd = RunDir(tmp_path / "a")
    rep = json.loads(rd.metrics.read_text())
    for key in ("split", "best_epoch", "iou", "niou", "pd", "fa", "fa_1e6", "metrics", "roc"):
        assert key in rep  # the existing keys stay
    assert rep["last_epoch"] == 3 and rep["best_val"] == straight["best_val"]
    assert set(rep["last"]) == {"iou", "niou", "pd", "fa", "fa_1e6", "n_images", "n_targets"}
    assert straight["last"] == rep["last"] and rep["wall_s"] > 0
    last = load_neutral(rd.last_weights)[0]["w"]
    np.testing.assert_array_equal(last, np.load(rd.last / "w.npy").astype(np.float32))
    assert extra_metadata(load_neutral(rd.last_weights)[1])["epoch"] == 3
    assert rep["last"]["n_images"] == len(IRSTDDataset(small_root, "test"))

    stopped = run_training(cfg, tmp_path / "b", lambda: NumpyTrainer(cfg), quiet=True, stop_after=2)
    assert stopped["last"] is None and stopped["wall_s"] > 0
    first = RunDir(tmp_path / "b").read_wall_s()
    assert 0 < first <= stopped["wall_s"]
    resumed = run_training(cfg, tmp_path / "b", lambda: NumpyTrainer(cfg), quiet=True, resume=True)
    assert resumed["last"] == straight["last"] and resumed["metrics"] == straight["metrics"]
    rep_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert rep_b["wall_s"] > first  # the first segment's time is carried over
    assert {k: v for k, v in rep_b.items() if k != "wall_s"} == {
        k: (str(tmp_path / "b" / "best.safetensors") if k == "weights" else v)
        for k, v in rep.items()
        if k != "wall_s"
    }
