"""PyTorch training: frozen teacher, every method's loss, exact resume, NaN stop, best on val,
distilled checkpoints, eval reports, CLI. Tiny data (64x64 synthetic, 32 crops) for speed."""

import json

import numpy as np
import pytest
import torch

from irkd.cli import main
from irkd.config import ConfigError, config_from_dict, load_config, save_config
from irkd.data import TrainBatches, synthesize
from irkd.data.prepare import prepare_data
from irkd.engine import NonFiniteLossError
from irkd.rundir import RunDir
from irkd.weights import load_neutral
from torch_ref.distill import METHODS
from torch_ref.models import create_model
from torch_ref.optim import build_optimizer
from torch_ref.predict import load_network, predict_probs
from torch_ref.train import TorchTrainer, run
from torch_ref.weights import load_neutral_net, save_neutral_net

TEACHER, STUDENT = "dnanet_xs", "dnanet_xxs"
TIMING = {"images_per_s", "train_s", "threads"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A shared 2-core machine: one intra-op thread is much faster when the other core is
    # busy, and every run of this module (module fixtures included) must use the same count
    # for the bit-exact resume checks.
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKD_TORCH_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("tt") / "S", 16, seed=0, size=64, test_fraction=0.25)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A teacher with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(123)
    net = create_model(TEACHER)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(2, 1, 32, 32))
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_neutral_net(net, path, name=TEACHER)
    return path


def make_cfg(root, teacher_ckpt=None, method="msa_awmse", **over):
    d = {
        "name": "t",
        "seed": 0,
        "data": {"root": str(root), "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": STUDENT},
        "method": {"name": method, "stages": ["enc1", "dec0"]},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 1},
        "train": {"log_every": 1},
    }
    if teacher_ckpt is not None:
        d["teacher"] = {"name": TEACHER, "checkpoint": str(teacher_ckpt)}
    for key, value in over.items():
        sec, _, field = key.partition("__")
        d.setdefault(sec, {})[field] = value
    return config_from_dict(d)


def _batch(root, cfg):
    data = prepare_data(cfg, "unused")
    images, masks = next(iter(data.batches.epoch(0)))
    return images, masks


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- the step


def test_teacher_is_frozen_and_only_student_and_connectors_change(root, teacher_ckpt):
    cfg = make_cfg(root, teacher_ckpt)
    tr = TorchTrainer(cfg)
    images, masks = _batch(root, cfg)
    t0, s0, d0 = _snapshot(tr.teacher), _snapshot(tr.student), _snapshot(tr.distiller)
    tr.train_mode()
    for step in range(3):
        tr.step(images, masks, step, 5e-3, where=f"step {step}")
    assert not tr.teacher.training and tr.student.training
    assert all(not p.requires_grad for p in tr.teacher.parameters())
    for k, v in tr.teacher.state_dict().items():  # weights and BN running statistics
        assert torch.equal(v, t0[k]), k
    changed = [k for k, v in tr.student.state_dict().items() if not torch.equal(v, s0[k])]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    dchanged = [k for k, v in tr.distiller.state_dict().items() if not torch.equal(v, d0[k])]
    assert any(k.startswith("connectors.") and k.endswith("conv.weight") for k in dchanged)
    # the optimizer holds exactly the student's and the distiller's parameters
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    expected = {id(p) for p in tr.student.parameters()} | {id(p) for p in tr.distiller.parameters()}
    assert opt_ids == expected


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_every_method_loss_is_finite_and_decreases(root, teacher_ckpt, method):
    cfg = make_cfg(root, teacher_ckpt, method=method)
    if method == "logit_kd":
        # as in test_train_ms: at lam 1 the task gradient drives a random teacher's logit-KD
        # term up (0.032 -> 0.044 over 8 steps); weigh it so that the step optimises it
        cfg.method.lam = 10.0
    tr = TorchTrainer(cfg)
    images, masks = _batch(root, cfg)
    tr.train_mode()
    losses = [tr.step(images, masks, 0, 3e-3, where="t") for _ in range(8)]
    kd = [v["kd"] for v in losses]
    total = [v["loss"] for v in losses]
    assert all(np.isfinite(total)) and all(np.isfinite(kd))
    assert total[-1] < total[0], total
    assert kd[-1] < kd[0], kd


def test_optimizers_build_and_step(root):
    net = create_model(STUDENT)
    for name in ("adamw", "adam", "sgd"):
        cfg = make_cfg(root, optim__name=name)
        opt = build_optimizer(list(net.parameters()), cfg.optim)
        kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
        assert type(opt) is kind[name]
        assert opt.param_groups[0]["weight_decay"] == cfg.optim.weight_decay


def test_deep_supervision(root, tmp_path):
    cfg = make_cfg(root, method="none", train__deep_supervision=True, schedule__epochs=1)
    res = run(cfg, tmp_path / "ds", quiet=True)
    assert res["metrics"] is not None
    net = load_network(STUDENT, tmp_path / "ds" / "best.safetensors")  # kwargs from metadata
    assert net.deep_supervision
    bad = make_cfg(root, method="none", train__deep_supervision=True, model__name="unet_s")
    with pytest.raises(ConfigError, match="no deep-supervision heads"):
        TorchTrainer(bad)


def test_distill_needs_a_teacher_checkpoint(root):
    cfg = make_cfg(root)
    cfg.teacher = config_from_dict({"teacher": {"name": TEACHER}}).teacher
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        TorchTrainer(cfg)


# ----------------------------------------------------------------------------- runs


def _records(run_dir):
    return [
        {k: v for k, v in r.items() if k not in TIMING and k != "data"}
        for r in RunDir(run_dir).records()
    ]


def _arrays(path):
    return load_neutral(path)[0]


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def straight_run(root, teacher_ckpt, tmp_path_factory):
    """An uninterrupted 2-epoch distillation run."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    res = run(make_cfg(root, teacher_ckpt), out, quiet=True)
    return out, res


def test_resume_after_epoch_is_bit_identical(root, teacher_ckpt, straight_run, tmp_path):
    ref, ref_res = straight_run
    out = tmp_path / "resumed"
    cfg = make_cfg(root, teacher_ckpt)
    first = run(cfg, out, stop_after=1, quiet=True)
    assert first["metrics"] is None and RunDir(out).read_state().epoch == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg, out, quiet=True)
    res = run(cfg, out, resume=True, quiet=True)
    assert res["metrics"] == ref_res["metrics"] and res["state"] == ref_res["state"]
    for name in ("student.safetensors", "distiller.safetensors"):
        _same_arrays(
            _arrays(ref / "checkpoints/last" / name), _arrays(out / "checkpoints/last" / name)
        )
    _same_arrays(_arrays(ref / "best.safetensors"), _arrays(out / "best.safetensors"))
    assert _records(out) == _records(ref)


def test_resume_after_a_kill_mid_epoch_is_bit_identical(
    root, teacher_ckpt, straight_run, tmp_path, monkeypatch
):
    ref, ref_res = straight_run
    out = tmp_path / "killed"
    cfg = make_cfg(root, teacher_ckpt)
    real = TorchTrainer.step

    def dying(self, images, masks, step, lr, **kw):
        if step == 3:  # second step of epoch 2, after step 3's log line was written
            raise KeyboardInterrupt
        return real(self, images, masks, step, lr, **kw)

    monkeypatch.setattr(TorchTrainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, quiet=True)
    monkeypatch.setattr(TorchTrainer, "step", real)
    assert any(r.get("step") == 3 for r in RunDir(out).records())
    res = run(cfg, out, resume=True, quiet=True)
    assert res["metrics"] == ref_res["metrics"]
    _same_arrays(_arrays(ref / "best.safetensors"), _arrays(out / "best.safetensors"))
    _same_arrays(
        _arrays(ref / "checkpoints/last/student.safetensors"),
        _arrays(out / "checkpoints/last/student.safetensors"),
    )
    assert _records(out) == _records(ref)


def test_resume_refuses_a_different_config(root, teacher_ckpt, straight_run):
    ref, _ = straight_run
    cfg = make_cfg(root, teacher_ckpt, optim__lr=1e-2)
    with pytest.raises(ConfigError, match="optim"):
        run(cfg, ref, resume=True, quiet=True)


def test_run_folder_contents_and_best_on_val(root, teacher_ckpt, straight_run):
    out, res = straight_run
    rd = RunDir(out)
    cfg = make_cfg(root, teacher_ckpt)
    assert load_config(rd.config) == cfg  # the resolved config round-trips
    for p in (rd.best, rd.best_json, rd.metrics, rd.last / "state.json", rd.last / "optimizer.pt"):
        assert p.is_file(), p
    # best = the epoch with the highest validation IoU (first one on ties)
    vals = [r for r in rd.records() if r["kind"] == "val"]
    assert len(vals) == 2
    ious = [r["iou"] for r in vals]
    best = json.loads(rd.best_json.read_text())
    assert best["epoch"] == vals[int(np.argmax(ious))]["epoch"] == res["best_epoch"]
    # selection used validation ids carved from train.txt, disjoint from test.txt
    data = prepare_data(cfg, "unused")
    test_ids = set((root / "test.txt").read_text().split())
    assert best["val_ids"] == len(data.val_ids) > 0
    assert not set(data.val_ids) & test_ids
    assert set(data.val_ids) <= set((root / "train.txt").read_text().split())
    # log records carry lr, terms and throughput
    train = [r for r in rd.records() if r["kind"] == "train"]
    assert len(train) == 4 and {"lr", "loss", "task", "kd", "kd/enc1", "kd/dec0"} <= set(train[0])
    assert train[0]["images_per_s"] > 0
    metrics = json.loads(rd.metrics.read_text())
    assert {"iou", "niou", "pd", "fa"} <= set(metrics) and metrics["split"] == "test"
    assert metrics["n_images"] == len(test_ids)


def test_best_is_the_highest_validation_iou(root, tmp_path, monkeypatch):
    import irkd.engine as engine

    scripted = iter([0.2, 0.5, 0.4])
    monkeypatch.setattr(engine, "validate", lambda trainer, data, **kw: {"iou": next(scripted)})
    cfg = make_cfg(root, method="none", schedule__epochs=3, train__keep_last=3)
    res = run(cfg, tmp_path / "r", quiet=True)
    rd = RunDir(tmp_path / "r")
    assert res["best_epoch"] == 2 and res["best_val"] == 0.5
    assert json.loads(rd.best_json.read_text())["epoch"] == 2
    # best.safetensors holds the weights of epoch 2 (kept as checkpoints/epoch_0002)
    _same_arrays(_arrays(rd.best), _arrays(rd.checkpoints / "epoch_0002" / "student.safetensors"))
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == [
        "epoch_0001",
        "epoch_0002",
        "last",
    ]


def test_distilled_best_loads_into_a_bare_student(root, straight_run):
    out, _ = straight_run
    arrays, meta = load_neutral(out / "best.safetensors")
    assert not any(k.startswith(("connectors", "losses", "teacher")) for k in arrays)
    net = create_model(STUDENT)
    load_neutral_net(net, out / "best.safetensors")
    net.eval()
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 64, 64))
    assert y.shape == (1, 1, 64, 64) and torch.isfinite(y).all()
    from irkd.data import IRSTDDataset
    from irkd.weights import extra_metadata

    extra = extra_metadata(meta)
    probs = list(predict_probs(net, IRSTDDataset(root, "test"), extra["mean"], extra["std"], 32))
    assert probs and all(p.shape == (64, 64) and 0 <= p.min() <= p.max() <= 1 for _, p in probs)


def test_nan_stops_the_run_cleanly_via_cli(root, teacher_ckpt, tmp_path, monkeypatch, capsys):
    cfg = make_cfg(root, teacher_ckpt)
    cfg_path = tmp_path / "c.yaml"
    save_config(cfg, cfg_path)
    real_epoch = TrainBatches.epoch

    def poisoned(self, e):
        for images, masks in real_epoch(self, e):
            if e == 1:
                images = images.copy()
                images[0, 0, 0, 0] = np.nan
            yield images, masks

    monkeypatch.setattr(TrainBatches, "epoch", poisoned)
    out = tmp_path / "nan"
    rc = main(["distill", str(cfg_path), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    line = [x for x in err if x.startswith("irkd: error:")]
    assert len(line) == 1 and "non-finite loss at epoch 2, step 3" in line[0]
    assert "checkpoints/last" in line[0] and "Traceback" not in "\n".join(err)
    rd = RunDir(out)
    assert rd.read_state().epoch == 1  # the last good checkpoint, untouched
    tr = TorchTrainer(cfg)
    tr.read(rd.last)  # and it still loads
    with pytest.raises(NonFiniteLossError):
        run(cfg, out, resume=True, quiet=True)


# ----------------------------------------------------------------------------- CLI


def test_cli_train_distill_eval(root, tmp_path, capsys):
    base = make_cfg(root, method="none", schedule__epochs=1)
    cfg_path = tmp_path / "c.yaml"
    save_config(base, cfg_path)
    teacher = tmp_path / "teacher"
    over = [f"model.name={TEACHER}"]
    assert main(["train", str(cfg_path), *over, "--out", str(teacher)]) == 0
    assert "test split" in capsys.readouterr().out
    ck = teacher / "best.safetensors"
    # train refuses a distillation config, distill refuses a plain one
    dist = [f"teacher.name={TEACHER}", f"teacher.checkpoint={ck}", "method.name=msa_awmse"]
    assert main(["train", str(cfg_path), *dist, "--out", str(tmp_path / "x")]) == 1
    assert "irkd distill" in capsys.readouterr().err
    assert main(["distill", str(cfg_path), "--out", str(tmp_path / "y")]) == 1
    student = tmp_path / "student"
    assert main(["distill", str(cfg_path), *dist, "--out", str(student)]) == 0
    capsys.readouterr()
    # eval of a distilled run: metrics.json, roc.png and side-by-sides with MSA maps
    assert main(["eval", "--run", str(student), "--n-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "IoU" in out
    ev = student / "eval-test"
    rep = json.loads((ev / "metrics.json").read_text())
    assert {"iou", "niou", "pd", "fa", "roc"} <= set(rep) and rep["teacher"] == str(ck)
    assert (ev / "roc.png").is_file() and len(list((ev / "samples").glob("*.png"))) == 2
    # eval from bare weights, chosen ids, teacher given explicitly
    ids = (root / "test.txt").read_text().split()[:1]
    args = ["eval", "--weights", str(student / "best.safetensors"), "--data", str(root)]
    args += ["--ids", ids[0], "--out", str(tmp_path / "ev2")]
    args += ["--teacher", str(ck), "--teacher-network", TEACHER]
    assert main(args) == 0
    assert [p.name for p in (tmp_path / "ev2" / "samples").iterdir()] == [f"{ids[0]}.png"]
    # resume via --out alone (config from the run folder): already complete, stays complete
    assert main(["train", "--resume", "--out", str(teacher)]) == 0
