"""MindSpore training: frozen teacher (GRAPH and PyNative), every method's loss, per-step lr in
a compiled step, exact resume after a kill, NaN stop, best on val, distilled checkpoints, and
SGD/AdamW steps against PyTorch. Tiny data (64x64 synthetic, 32 crops) for speed.

Compiling a train step costs seconds (U-Net) to tens of seconds (DNANet) on this CPU, so the
GRAPH_MODE tests share a few compiled trainers; the per-method and cross-framework checks run
the same step function eagerly (PyNative).
"""

import json

import mindspore as ms
import numpy as np
import pytest
import torch

from irkd.cli import main
from irkd.config import ConfigError, config_from_dict, load_config, save_config
from irkd.data import IRSTDDataset, TrainBatches, synthesize
from irkd.data.prepare import prepare_data
from irkd.engine import NonFiniteLossError
from irkd.rundir import RunDir
from irkd.weights import WeightsError, extra_metadata, load_neutral
from ms_impl.distill import METHODS
from ms_impl.models import create_model
from ms_impl.optim import (
    build_optimizer,
    get_lr,
    load_optimizer,
    optimizer_state,
    save_optimizer,
    set_lr,
)
from ms_impl.predict import load_network, predict_probs
from ms_impl.runtime import set_mode
from ms_impl.train import MSTrainer, run
from ms_impl.weights import load_neutral_net as load_neutral_ms
from ms_impl.weights import net_to_neutral
from ms_impl.weights import save_neutral_net as save_neutral_ms

TEACHER, STUDENT = "dnanet_xs", "dnanet_xxs"  # the DNANet pair
U_TEACHER, U_STUDENT = "unet", "unet_s"  # a U-Net pair: compiles in seconds
TIMING = {"images_per_s", "train_s", "threads"}

# Cross-framework tolerances after 3 steps (see test_optimizer_steps_match_pytorch).
LOSS_ATOL = 1e-5  # all optimizers (measured <= 6e-8)
SGD_ATOL = 1e-5  # SGD, every parameter and BN statistic (measured 1.8e-7)
ADAM_BULK_LR = 0.01  # Adam(W): at most 1% of the weights drift by more than 0.01 * lr
ADAM_BULK_SHARE = 0.01  # (measured: 0.3% for AdamW, 0.2% for Adam)
ADAM_MAX_LR = 10.0  # Adam(W): no weight drifts by more than 10 * lr (measured 3.8 lr, AdamW)


@pytest.fixture(scope="module", autouse=True)
def _pynative_after():
    yield
    set_mode("pynative")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("mt") / "S", 16, seed=0, size=64, test_fraction=0.25)


def _teacher_file(tmp_path_factory, name):
    """A teacher with random weights and non-trivial BatchNorm statistics."""
    set_mode("pynative")
    ms.set_seed(123)
    net = create_model(name)
    net.set_train(True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        net(ms.Tensor(rng.standard_normal((2, 1, 32, 32)).astype(np.float32)))
    path = tmp_path_factory.mktemp("teacher") / f"{name}.safetensors"
    save_neutral_ms(net, path, name=name)
    return path


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return _teacher_file(tmp_path_factory, TEACHER)


@pytest.fixture(scope="module")
def u_teacher_ckpt(tmp_path_factory):
    return _teacher_file(tmp_path_factory, U_TEACHER)


def make_cfg(root, teacher_ckpt=None, method="msa_awmse", teacher=TEACHER, **over):
    d = {
        "name": "t",
        "seed": 0,
        "backend": "mindspore",
        "data": {"root": str(root), "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": STUDENT},
        "method": {"name": method, "stages": ["enc1", "dec0"]},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 1},
        "train": {"log_every": 1},
    }
    if teacher_ckpt is not None:
        d["teacher"] = {"name": teacher, "checkpoint": str(teacher_ckpt)}
    for key, value in over.items():
        sec, _, field = key.partition("__")
        d.setdefault(sec, {})[field] = value
    return config_from_dict(d)


def _batch(cfg):
    data = prepare_data(cfg, "unused")
    return next(iter(data.batches.epoch(0)))


def _trainable(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


# ----------------------------------------------------------------------------- the step


@pytest.fixture(scope="module")
def graph_trainer(root, teacher_ckpt):
    """A GRAPH_MODE distillation trainer (DNANet teacher -> U-Net student), plain SGD.

    The U-Net student keeps the compilation short (seconds); the DNANet student's train step
    (about 25 s to compile) is covered by the slow test below.
    """
    cfg = make_cfg(
        root,
        teacher_ckpt,
        model__name=U_STUDENT,
        optim__name="sgd",
        optim__momentum=0.0,
        optim__weight_decay=0.0,
    )
    tr = MSTrainer(cfg, graph=True)
    return tr, _batch(cfg)


def _check_frozen(tr, images, masks, steps=3):
    t0, s0, d0 = (
        net_to_neutral(tr.teacher),
        net_to_neutral(tr.student),
        net_to_neutral(tr.distiller),
    )
    tr.train_mode()
    for step in range(steps):
        values = tr.step(images, masks, step, 5e-3, where=f"step {step}")
        assert all(np.isfinite(v) for v in values.values())
    assert not tr.teacher.training and tr.student.training
    assert all(not p.requires_grad for p in tr.teacher.get_parameters())
    t1 = net_to_neutral(tr.teacher)  # weights and BN moving statistics, bit for bit
    for k, v in t0.items():
        np.testing.assert_array_equal(t1[k], v, err_msg=k)
    s1 = net_to_neutral(tr.student)
    changed = [k for k in s0 if not np.array_equal(s0[k], s1[k])]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    d1 = net_to_neutral(tr.distiller)
    dchanged = [k for k in d0 if not np.array_equal(d0[k], d1[k])]
    assert any(k.startswith("connectors.") and k.endswith("conv.weight") for k in dchanged)
    # the optimizer holds exactly the student's and the distiller's trainable parameters
    opt_ids = {id(p) for p in tr.optimizer.parameters}
    expected = {id(p) for p in tr.student.trainable_params()}
    expected |= {id(p) for p in tr.distiller.trainable_params()}
    assert opt_ids == expected


def test_teacher_frozen_graph_mode(graph_trainer):
    tr, (images, masks) = graph_trainer
    assert tr.graph and ms.get_context("mode") == ms.GRAPH_MODE
    _check_frozen(tr, images, masks)


@pytest.mark.slow
def test_teacher_frozen_graph_mode_dnanet_student(root, teacher_ckpt):
    cfg = make_cfg(root, teacher_ckpt)
    tr = MSTrainer(cfg, graph=True)
    images, masks = _batch(cfg)
    _check_frozen(tr, images, masks)


def test_teacher_frozen_pynative(root, teacher_ckpt):
    cfg = make_cfg(root, teacher_ckpt, model__name=U_STUDENT)  # DNANet teacher, fast student
    tr = MSTrainer(cfg, graph=False)
    assert ms.get_context("mode") == ms.PYNATIVE_MODE
    images, masks = _batch(cfg)
    tr.train_mode()
    loss, terms = tr.losses(images, masks, 0)  # forward only: the same values as the step
    _check_frozen(tr, images, masks, steps=2)
    assert set(terms) == {"task", "kd", "kd/enc1", "kd/dec0"}
    tr2 = MSTrainer(cfg, graph=False)
    tr2.train_mode()
    values = tr2.step(images, masks, 0, 5e-3, where="0")
    assert values["loss"] == pytest.approx(float(loss.asnumpy()), rel=1e-6)
    for k, v in terms.items():
        assert values[k] == pytest.approx(float(v.asnumpy()), rel=1e-6), k


def test_lr_changes_are_applied_by_the_compiled_step(graph_trainer):
    """SGD without momentum or decay: each compiled step moves the weights by -lr * grad,
    with the lr set just before it (the reference gradient is taken eagerly)."""
    from ms_impl.runtime import context_mode

    tr, (images, masks) = graph_trainer
    set_mode("pynative")  # as another trainer or an evaluation may leave it
    tr.train_mode()
    assert ms.get_context("mode") == ms.GRAPH_MODE
    tr.step(images, masks, 0, 1e-3, where="warm-up")  # compiled (if not yet)
    w0 = _trainable(tr.student)
    tr.step(images, masks, 0, 0.0, where="lr 0")
    assert get_lr(tr.optimizer) == [0.0]
    for k, v in _trainable(tr.student).items():
        np.testing.assert_array_equal(v, w0[k], err_msg=k)
    params = tr.optimizer.parameters
    grad_fn = ms.value_and_grad(tr._forward, None, params, has_aux=True)
    for lr in (1e-3, 4e-3, 1e-4):
        with context_mode("pynative"):
            _, grads = grad_fn(*tr.inputs(images, masks, 0))
        before = [p.asnumpy().copy() for p in params]
        tr.step(images, masks, 0, lr, where=f"lr {lr}")
        assert get_lr(tr.optimizer)[0] == pytest.approx(lr)
        err = sum(
            float(((p.asnumpy() - b + lr * g.asnumpy()) ** 2).sum())
            for p, b, g in zip(params, before, grads, strict=True)
        )
        ref = sum(float(((lr * g.asnumpy()) ** 2).sum()) for g in grads)
        assert np.sqrt(err / ref) < 1e-3, (lr, np.sqrt(err / ref))


def test_non_finite_loss_skips_the_update_in_graph_mode(graph_trainer):
    # A NaN mask pixel, not an image pixel: MindSpore's CPU ReLU maps NaN to 0 (PyTorch's
    # keeps it), so a NaN input does not reliably reach the loss here.
    tr, (images, masks) = graph_trainer
    tr.train_mode()
    bad = masks.copy()
    bad[0, 0, 0, 0] = np.nan
    w0 = _trainable(tr.student)
    d0 = _trainable(tr.distiller)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at here"):
        tr.step(images, bad, 0, 1e-2, where="here")
    for before, net in ((w0, tr.student), (d0, tr.distiller)):
        after = _trainable(net)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_every_method_loss_is_finite_and_decreases(root, u_teacher_ckpt, method):
    cfg = make_cfg(root, u_teacher_ckpt, method=method, teacher=U_TEACHER, model__name=U_STUDENT)
    if method == "logit_kd":
        # at lam 1 a random teacher's logit-KD term is ~1% of the task loss, whose gradient
        # then drives it up; weigh it so that the step optimises it
        cfg.method.lam = 10.0
    tr = MSTrainer(cfg, graph=False)
    images, masks = _batch(cfg)
    tr.train_mode()
    losses = [tr.step(images, masks, 0, 3e-3, where="t") for _ in range(4)]
    kd = [v["kd"] for v in losses]
    total = [v["loss"] for v in losses]
    assert all(np.isfinite(total)) and all(np.isfinite(kd))
    assert total[-1] < total[0], total
    assert kd[-1] < kd[0], kd


def test_optimizers_build_and_state_round_trip(tmp_path):
    set_mode("pynative")
    net = create_model(U_STUDENT)
    kinds = {"adamw": "AdamW", "adam": "AdamL2", "sgd": "SGD"}
    for name, cls in kinds.items():
        cfg = config_from_dict({"optim": {"name": name, "weight_decay": 3e-4}})
        opt = build_optimizer(net.trainable_params(), cfg.optim)
        assert type(opt).__name__ == cls
        wd = opt.l2 if name == "adam" else opt.param_groups[0]["weight_decay"]
        assert wd == pytest.approx(3e-4)
    cfg = config_from_dict({"optim": {"name": "adamw"}})
    opt = build_optimizer(net.trainable_params(), cfg.optim)
    state = optimizer_state(opt)
    assert "state_step" in state and "learning_rate_group_0" in state
    assert not set(state) & {p.name for p in net.trainable_params()}
    set_lr(opt, 0.25)
    state["state_step"].set_data(ms.Tensor(7, ms.int32))
    save_optimizer(opt, tmp_path / "o.ckpt")
    opt2 = build_optimizer(net.trainable_params(), cfg.optim)
    load_optimizer(opt2, tmp_path / "o.ckpt")
    assert get_lr(opt2) == [0.25] and int(optimizer_state(opt2)["state_step"].asnumpy()) == 7
    sgd = build_optimizer(
        net.trainable_params(), config_from_dict({"optim": {"name": "sgd"}}).optim
    )
    with pytest.raises(WeightsError, match="does not fit"):
        load_optimizer(sgd, tmp_path / "o.ckpt")


def test_distill_needs_a_teacher_checkpoint(root):
    cfg = make_cfg(root)
    cfg.teacher = config_from_dict({"teacher": {"name": TEACHER}}).teacher
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        MSTrainer(cfg, graph=False)


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


def _u_cfg(root, u_teacher_ckpt):
    return make_cfg(root, u_teacher_ckpt, teacher=U_TEACHER, model__name=U_STUDENT)


@pytest.fixture(scope="module")
def straight_run(root, u_teacher_ckpt, tmp_path_factory):
    """An uninterrupted 2-epoch GRAPH_MODE distillation run (U-Net pair, MSA-AWMSE)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    res = run(_u_cfg(root, u_teacher_ckpt), out, quiet=True)
    return out, res


def test_resume_after_a_kill_mid_epoch_is_exact(
    root, u_teacher_ckpt, straight_run, tmp_path, monkeypatch
):
    """Resume tolerance on CPU: none. Weights, optimizer state, logs and metrics are equal."""
    ref, ref_res = straight_run
    out = tmp_path / "killed"
    cfg = _u_cfg(root, u_teacher_ckpt)
    real = MSTrainer.step

    def dying(self, images, masks, step, lr, **kw):
        if step == 3:  # second step of epoch 2, after step 3's log line was written
            raise KeyboardInterrupt
        return real(self, images, masks, step, lr, **kw)

    monkeypatch.setattr(MSTrainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, quiet=True)
    monkeypatch.setattr(MSTrainer, "step", real)
    assert RunDir(out).read_state().epoch == 1
    assert any(r.get("step") == 3 for r in RunDir(out).records())
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg, out, quiet=True)
    res = run(cfg, out, resume=True, quiet=True)
    assert res["metrics"] == ref_res["metrics"] and res["state"] == ref_res["state"]
    _same_arrays(_arrays(ref / "best.safetensors"), _arrays(out / "best.safetensors"))
    for name in ("student.safetensors", "distiller.safetensors"):
        _same_arrays(
            _arrays(ref / "checkpoints/last" / name), _arrays(out / "checkpoints/last" / name)
        )
    a = ms.load_checkpoint(str(ref / "checkpoints/last/optimizer.ckpt"))
    b = ms.load_checkpoint(str(out / "checkpoints/last/optimizer.ckpt"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)
    assert _records(out) == _records(ref)


def test_resume_refuses_a_different_config(root, u_teacher_ckpt, straight_run):
    ref, _ = straight_run
    cfg = _u_cfg(root, u_teacher_ckpt)
    cfg.optim.lr = 1e-2
    with pytest.raises(ConfigError, match="optim"):
        run(cfg, ref, resume=True, quiet=True)


def test_run_folder_contents_and_log_keys(root, u_teacher_ckpt, straight_run):
    out, res = straight_run
    rd = RunDir(out)
    cfg = _u_cfg(root, u_teacher_ckpt)
    assert load_config(rd.config) == cfg
    files = (rd.best, rd.best_json, rd.metrics, rd.last / "state.json")
    files += tuple(rd.last / n for n in ("optimizer.ckpt", "student.safetensors"))
    for p in files + (rd.last / "distiller.safetensors",):
        assert p.is_file(), p
    recs = rd.records()
    assert recs[0]["kind"] == "start" and recs[0]["backend"] == "mindspore"
    assert recs[0]["device"] == "CPU" and recs[0]["threads"] >= 1
    vals = [r for r in recs if r["kind"] == "val"]
    assert len(vals) == 2
    best = json.loads(rd.best_json.read_text())
    assert best["epoch"] == vals[int(np.argmax([r["iou"] for r in vals]))]["epoch"]
    assert best["epoch"] == res["best_epoch"] and best["val_ids"] == 3
    train = [r for r in recs if r["kind"] == "train"]
    keys = {"kind", "epoch", "step", "lr", "loss", "task", "kd", "kd/enc1", "kd/dec0"}
    assert len(train) == 4 and set(train[0]) == keys | {"images_per_s"}
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[0]["lr"] < train[2]["lr"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert {"mean_loss", "mean_kd", "train_s", "images_per_s"} <= set(epochs[0])
    metrics = json.loads(rd.metrics.read_text())
    assert {"iou", "niou", "pd", "fa"} <= set(metrics) and metrics["split"] == "test"
    assert metrics["n_images"] == 4


def test_distilled_best_loads_into_a_bare_student(root, straight_run):
    out, _ = straight_run
    arrays, meta = load_neutral(out / "best.safetensors")
    assert not any(k.startswith(("connectors", "losses", "teacher")) for k in arrays)
    set_mode("pynative")
    net = load_network(U_STUDENT, out / "best.safetensors")
    _same_arrays(net_to_neutral(net), arrays)
    extra = extra_metadata(meta)
    assert extra["backend"] == "mindspore" and extra["method"] == "msa_awmse"
    test = IRSTDDataset(root, "test")
    probs = list(predict_probs(net, test, extra["mean"], extra["std"], 32))
    assert len(probs) == 4
    assert all(p.shape == (64, 64) and 0 <= p.min() <= p.max() <= 1 for _, p in probs)
    # a bare student built by its name takes the file strictly; another network does not
    bare = create_model(U_STUDENT)
    load_neutral_ms(bare, out / "best.safetensors")
    _same_arrays(net_to_neutral(bare), arrays)
    with pytest.raises(WeightsError):
        load_network(STUDENT, out / "best.safetensors")


def test_nan_stops_the_run_cleanly_via_cli(root, tmp_path, monkeypatch, capsys):
    cfg = make_cfg(root, method="none", model__name=U_STUDENT, train__graph_mode=False)
    cfg_path = tmp_path / "c.yaml"
    save_config(cfg, cfg_path)
    real_epoch = TrainBatches.epoch

    def poisoned(self, e):
        for images, masks in real_epoch(self, e):
            if e == 1:  # a NaN mask pixel (see test_non_finite_loss_skips_the_update_...)
                masks = masks.copy()
                masks[0, 0, 0, 0] = np.nan
            yield images, masks

    monkeypatch.setattr(TrainBatches, "epoch", poisoned)
    out = tmp_path / "nan"
    rc = main(["train", str(cfg_path), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    line = [x for x in err if x.startswith("irkd: error:")]
    assert len(line) == 1 and "non-finite loss at epoch 2, step 3" in line[0]
    assert "checkpoints/last" in line[0] and "Traceback" not in "\n".join(err)
    rd = RunDir(out)
    assert rd.read_state().epoch == 1  # the last good checkpoint, untouched
    assert not list(rd.checkpoints.glob(".last.*"))
    tr = MSTrainer(cfg)
    tr.read(rd.last)  # and it still loads
    _same_arrays(net_to_neutral(tr.student), _arrays(rd.last / "student.safetensors"))


# ----------------------------------------------------------------------------- vs PyTorch


@pytest.fixture
def _torch_one_thread():
    # MindSpore's and PyTorch's CPU thread pools spin on the same 2 cores: one torch thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("optim", ["sgd", "adamw", pytest.param("adam", marks=pytest.mark.slow)])
def test_optimizer_steps_match_pytorch(root, tmp_path, optim, _torch_one_thread):
    """3 steps of a dnanet_xxs alone, same neutral weights, same batch, both frameworks.

    Losses agree to float32 rounding, and so do SGD's parameters. Adam(W) divides each
    gradient element by its own running size, so an element whose gradient is rounding noise
    in both frameworks (the bias of a convolution feeding a BatchNorm has an exact gradient
    of 0; so does the weight of a 1-input-channel 1x1 convolution feeding one) moves by up to
    about lr per step differently: the bulk of the weights is compared tightly, the maximum
    loosely.
    """
    from torch_ref.models import create_model as torch_create
    from torch_ref.train import TorchTrainer
    from torch_ref.weights import net_to_neutral as state_to_neutral
    from torch_ref.weights import save_neutral_net as save_neutral_torch

    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    save_neutral_torch(torch_create(STUDENT), init, name=STUDENT)
    cfg = make_cfg(root, method="none", model__checkpoint=str(init), optim__name=optim)
    images, masks = _batch(cfg)
    lr = 1e-2 if optim == "sgd" else 1e-3
    mt = MSTrainer(cfg, graph=False)
    tt = TorchTrainer(cfg)
    mt.train_mode()
    tt.train_mode()
    loss_drift = 0.0
    for step in range(3):
        a = mt.step(images, masks, step, lr, where="ms")
        b = tt.step(images, masks, step, lr, where="torch")
        loss_drift = max(loss_drift, abs(a["loss"] - b["loss"]))
    ms_w = net_to_neutral(mt.student)
    th_w = state_to_neutral(tt.student)
    assert ms_w.keys() == th_w.keys()
    drift = {k: np.abs(ms_w[k] - th_w[k]) for k in ms_w}
    worst = max(drift, key=lambda k: drift[k].max())
    weights = np.concatenate(
        [v.ravel() for k, v in drift.items() if not k.endswith(("running_mean", "running_var"))]
    )
    share = float((weights > ADAM_BULK_LR * lr).mean())
    print(
        f"\n{optim} (lr {lr:g}): max drift after 3 steps {drift[worst].max():.3g} ({worst}), "
        f"{100 * share:.2f}% of {weights.size} weights beyond {ADAM_BULK_LR:g} lr; "
        f"max loss drift {loss_drift:.3g}"
    )
    assert loss_drift < LOSS_ATOL
    if optim == "sgd":
        assert drift[worst].max() < SGD_ATOL, worst
    else:
        assert share < ADAM_BULK_SHARE
        assert weights.max() < ADAM_MAX_LR * lr


# ----------------------------------------------------------------------------- CLI


def test_cli_distill_and_eval_on_mindspore(root, u_teacher_ckpt, tmp_path, capsys):
    """``irkd distill`` dispatches to ms_impl.train; ``irkd eval`` to ms_impl.predict."""
    cfg = _u_cfg(root, u_teacher_ckpt)
    cfg.train.graph_mode = False  # a 4-step run: eager beats compiling
    cfg.schedule.epochs = 1
    cfg_path = tmp_path / "c.yaml"
    save_config(cfg, cfg_path)
    out = tmp_path / "student"
    assert main(["distill", str(cfg_path), "--out", str(out)]) == 0
    assert "test split" in capsys.readouterr().out
    assert RunDir(out).records()[0]["backend"] == "mindspore"
    assert main(["eval", "--run", str(out), "--n-samples", "2"]) == 0
    assert "IoU" in capsys.readouterr().out
    rep = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert rep["backend"] == "mindspore" and rep["teacher"] == str(u_teacher_ckpt)
    figures = sorted((out / "eval-test" / "samples").glob("*.png"))
    assert len(figures) == 2
    ref = json.loads((out / "metrics.json").read_text())
    assert rep["iou"] == pytest.approx(ref["iou"], abs=1e-6)


def test_read_restores_in_place_after_compiled_steps(root, tmp_path):
    """read() after steps: the next steps repeat exactly (load in place, not set_data)."""
    cfg = make_cfg(root, method="none", model__name=U_STUDENT, train__graph_mode=False)
    tr = MSTrainer(cfg)
    images, masks = _batch(cfg)
    tr.train_mode()
    tr.step(images, masks, 0, 1e-2, where="0")
    tr.write(tmp_path)
    first = [tr.step(images, masks, i, 1e-2, where="i") for i in (1, 2)]
    w_first = net_to_neutral(tr.student)
    tr.read(tmp_path)
    again = [tr.step(images, masks, i, 1e-2, where="i") for i in (1, 2)]
    assert again == first
    _same_arrays(net_to_neutral(tr.student), w_first)


def test_compiled_eval_sees_the_trained_weights(graph_trainer):
    """``auto`` eval (compiled) agrees with eager eval, also after further train steps."""
    from ms_impl.predict import forward_fn

    tr, (images, masks) = graph_trainer
    x = images[:1]
    x2 = np.zeros((1, 1, 64, 32), np.float32)
    auto = forward_fn(tr.student, mode="auto", max_shapes=1)
    eager = forward_fn(tr.student, mode="pynative")
    for _ in range(2):
        tr.train_mode()
        tr.step(images, masks, 0, 1e-2, where="t")
        before = ms.get_context("mode")
        a, b = auto(x), eager(x)
        assert ms.get_context("mode") == before  # restored after each call
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(auto(x2), eager(x2), rtol=1e-5, atol=1e-5)  # eager fallback


def test_teacher_msa_maps_match_pytorch(root, teacher_ckpt):
    """The figures' MSA maps: same teacher weights, same image, both frameworks."""
    from irkd.config import MethodConfig
    from ms_impl.predict import teacher_msa_maps
    from torch_ref.predict import load_network as torch_load
    from torch_ref.predict import teacher_msa_maps as torch_maps

    method = MethodConfig(stages=["enc1", "dec0", "dec2"])
    x = np.random.default_rng(3).standard_normal((1, 1, 64, 96)).astype(np.float32)
    ms_maps = teacher_msa_maps(load_network(TEACHER, teacher_ckpt), method, x)
    th_maps = torch_maps(torch_load(TEACHER, teacher_ckpt), method, x)
    assert ms_maps.keys() == th_maps.keys() == {"enc1", "dec0", "dec2"}
    for k in ms_maps:
        assert ms_maps[k].shape == (64, 96) and ms_maps[k].dtype == np.float32
        np.testing.assert_allclose(ms_maps[k], th_maps[k], rtol=1e-4, atol=1e-4, err_msg=k)
