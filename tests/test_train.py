"""Training on both backends: PyTorch (``torch_ref.train``) and MindSpore (``ms_impl.train``).

Merged from tests/test_train_torch.py and tests/test_train_ms.py. A behaviour both backends
must have is one test parametrized by ``backend`` (``torch``, ``ms``): frozen teacher, every
method's loss decreasing, optimizers, the teacher checkpoint requirement, exact resume after a
kill, refusal of a changed config, run folder contents and best-on-validation, distilled
checkpoints, NaN stop via the CLI, ``irkd distill`` + ``irkd eval``. Behaviours of one backend
only are ``test_torch_*`` and ``test_ms_*`` (MindSpore: GRAPH_MODE steps, lr in a compiled
step, compiled eval, in-place read, optimizer state files, steps and MSA maps against PyTorch).

Tiny data (64x64 synthetic, 32 crops). PyTorch trains the DNANet pair (dnanet_xs ->
dnanet_xxs); MindSpore the U-Net pair (unet -> unet_s), whose steps are cheap in PyNative and
whose train step compiles in seconds (DNANet's: tens of seconds). Teachers are neutral files
written once by PyTorch (random weights, non-trivial BatchNorm statistics); either backend
reads them.

Speed (a shared 2-core CPU): each run folder is made once per module and backend
(``straight_run``, by ``irkd distill``; MindSpore in PyNative), MindSpore's GRAPH_MODE trainer
is compiled once (``graph_trainer``), and the default set keeps one cheap test of each
behaviour per backend. ``slow`` holds the costly variants: the baselines' training steps
(MindSpore: every method), MindSpore's GRAPH_MODE resume, the DNANet pair's compiled step,
the compiled eval, the PyNative read-back, and the optimizer trajectories against PyTorch
(also checked by the parity suite's quick ``train/sgd/pynative`` and ``train/adamw/pynative``
cases).
"""

import contextlib
import io
import json

import mindspore as ms
import numpy as np
import pytest
import torch

import ms_impl  # noqa: F401  (sets ONEDNN_MAX_CPU_ISA before MindSpore's first conv)
from irkd.cli import main
from irkd.config import ConfigError, MethodConfig, config_from_dict, load_config, save_config
from irkd.data import IRSTDDataset, TrainBatches, synthesize
from irkd.data.prepare import prepare_data
from irkd.engine import NonFiniteLossError
from irkd.evaluate import summary_metrics
from irkd.rundir import RunDir
from irkd.weights import WeightsError, extra_metadata, load_neutral
from ms_impl import predict as ms_predict
from ms_impl import train as ms_train
from ms_impl.distill import METHODS
from ms_impl.models import create_model as ms_create
from ms_impl.optim import build_optimizer as ms_build_optimizer
from ms_impl.optim import get_lr, load_optimizer, optimizer_state, save_optimizer, set_lr
from ms_impl.runtime import set_mode
from ms_impl.weights import load_neutral_net as ms_load_neutral
from ms_impl.weights import net_to_neutral as ms_neutral
from torch_ref import predict as t_predict
from torch_ref import train as t_train
from torch_ref.models import create_model as t_create
from torch_ref.optim import build_optimizer as t_build_optimizer
from torch_ref.weights import load_neutral_net as t_load_neutral
from torch_ref.weights import net_to_neutral as t_neutral
from torch_ref.weights import save_neutral_net as t_save_neutral

BACKENDS = ("torch", "ms")
BACKEND_NAME = {"torch": "pytorch", "ms": "mindspore"}
PAIR = {"torch": ("dnanet_xs", "dnanet_xxs"), "ms": ("unet", "unet_s")}  # (teacher, student)
DNANET_TEACHER = "dnanet_xs"
TIMING = {"images_per_s", "train_s", "threads"}
DISTILL_METHODS = [m for m in METHODS if m != "none"]

# Cross-framework tolerances after 3 steps (see test_ms_optimizer_steps_match_pytorch).
LOSS_ATOL = 1e-5  # all optimizers (measured <= 6e-8)
SGD_ATOL = 1e-5  # SGD, every parameter and BN statistic (measured 1.8e-7)
ADAM_BULK_LR = 0.01  # Adam(W): at most 1% of the weights drift by more than 0.01 * lr
ADAM_BULK_SHARE = 0.01  # (measured: 0.3% for AdamW, 0.2% for Adam)
ADAM_MAX_LR = 10.0  # Adam(W): no weight drifts by more than 10 * lr (measured 3.8 lr, AdamW)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A shared 2-core machine: one torch intra-op thread is much faster when the other core
    # is busy (and MindSpore's pool spins on the same cores); every run of this module
    # (module fixtures included) must use the same count for the bit-exact resume checks.
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKD_TORCH_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)
    set_mode("pynative")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("tr") / "S", 16, seed=0, size=64, test_fraction=0.25)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """``get(name)``: a teacher file (random weights, non-trivial BatchNorm statistics)."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(123)
            net = t_create(name)
            net.train()
            with torch.no_grad():
                for _ in range(2):
                    net(torch.randn(2, 1, 32, 32))
            made[name] = tmp_path_factory.mktemp("teacher") / f"{name}.safetensors"
            t_save_neutral(net, made[name], name=name)
        return made[name]

    return get


def make_cfg(backend, root, teacher=None, method="msa_awmse", **over):
    """The tiny experiment of ``backend`` (its network pair); ``teacher``: a checkpoint."""
    t_name, s_name = PAIR[backend]
    d = {
        "name": "t",
        "seed": 0,
        "backend": BACKEND_NAME[backend],
        "data": {"root": str(root), "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": s_name},
        "method": {"name": method, "stages": ["enc1", "dec0"]},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 2, "warmup_epochs": 1},
        "train": {"log_every": 1},
    }
    if teacher is not None:
        d["teacher"] = {"name": t_name, "checkpoint": str(teacher)}
    for key, value in over.items():
        sec, _, field = key.partition("__")
        d.setdefault(sec, {})[field] = value
    return config_from_dict(d)


def _batch(cfg):
    data = prepare_data(cfg, "unused")
    return next(iter(data.batches.epoch(0)))


def make_trainer(backend, cfg, graph=False):
    if backend == "torch":
        return t_train.TorchTrainer(cfg)
    return ms_train.MSTrainer(cfg, graph=graph)


def run(backend, cfg, out, **kw):
    mod = t_train if backend == "torch" else ms_train
    return mod.run(cfg, out, quiet=True, **kw)


def trainer_class(backend):
    return t_train.TorchTrainer if backend == "torch" else ms_train.MSTrainer


def neutral(backend, net):
    return t_neutral(net) if backend == "torch" else ms_neutral(net)


def _trainable(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


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


def _optimizer_arrays(backend, folder):
    """The optimizer state file of a checkpoint folder, as numpy arrays by name."""
    if backend == "torch":
        blob = torch.load(folder / "optimizer.pt", weights_only=True)
        state = blob["optimizer"]
        out = {"torch_rng": blob["torch_rng"].numpy()}
        for pid, slots in state["state"].items():
            for k, v in slots.items():
                out[f"{pid}.{k}"] = np.asarray(v)
        for i, group in enumerate(state["param_groups"]):
            out[f"group{i}.lr"] = np.asarray(group["lr"])
        return out
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(folder / "optimizer.ckpt")).items()}


# ----------------------------------------------------------------------------- the step


def _check_frozen(backend, tr, images, masks, steps=3, lr=5e-3, step_index=True):
    """``steps`` steps: the teacher stays bit for bit, the student and the connectors move,
    the optimizer holds exactly their parameters. Returns the steps' values."""
    t0, s0, d0 = (neutral(backend, n) for n in (tr.teacher, tr.student, tr.distiller))
    tr.train_mode()
    values = []
    for step in range(steps):
        i = step if step_index else 0
        values.append(tr.step(images, masks, i, lr, where=f"step {step}"))
        assert all(np.isfinite(v) for v in values[-1].values())
    assert not tr.teacher.training and tr.student.training
    if backend == "torch":
        teacher_params = list(tr.teacher.parameters())
        opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
        expected = {id(p) for n in (tr.student, tr.distiller) for p in n.parameters()}
    else:
        teacher_params = list(tr.teacher.get_parameters())
        opt_ids = {id(p) for p in tr.optimizer.parameters}
        expected = {id(p) for n in (tr.student, tr.distiller) for p in n.trainable_params()}
    assert all(not p.requires_grad for p in teacher_params)
    _same_arrays(neutral(backend, tr.teacher), t0)  # weights and BN statistics, bit for bit
    s1 = neutral(backend, tr.student)
    changed = [k for k in s0 if not np.array_equal(s0[k], s1[k])]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    d1 = neutral(backend, tr.distiller)
    dchanged = [k for k in d0 if not np.array_equal(d0[k], d1[k])]
    if any(k.startswith("connectors.") for k in d0):  # logit_kd has none
        assert any(k.startswith("connectors.") and k.endswith("conv.weight") for k in dchanged)
    for part in ("losses.0.generation.", "losses.0.conv_mask_s."):  # MGD's, FGD's weights
        if any(k.startswith(part) for k in d0):
            assert any(k.startswith(part) for k in dchanged), part
    assert opt_ids == expected  # exactly the student's and the distiller's parameters
    return values


def _method_params():
    """Every method on both backends. MindSpore's are slow (a PyNative step costs about a
    second; its fast distillation steps are test_ms_graph_steps_freeze_the_teacher_and_lower_
    the_loss and those of the PyNative ``straight_run``); PyTorch keeps the method and the baselines
    with trainable loss weights (MGD, FGD) fast. Every loss itself is checked on both
    backends in tests/test_baselines.py and tests/test_method.py."""
    out = []
    for backend in BACKENDS:
        for method in DISTILL_METHODS:
            slow = backend == "ms" or method not in ("msa_awmse", "mgd", "fgd")
            marks = pytest.mark.slow if slow else ()
            out.append(pytest.param(backend, method, marks=marks, id=f"{backend}-{method}"))
    return out


@pytest.mark.parametrize(("backend", "method"), _method_params())
def test_every_method_trains_with_a_frozen_teacher(backend, root, teacher_file, method):
    """Eager steps (MindSpore: PyNative): ``losses`` gives the first step's values, the loss
    and the distillation term decrease, the teacher stays bit for bit, and the optimizer
    holds exactly the student's and the distiller's parameters (MGD's and FGD's included)."""
    cfg = make_cfg(backend, root, teacher_file(PAIR[backend][0]), method=method)
    if method == "logit_kd":
        # at lam 1 the task gradient drives a random teacher's logit-KD term up (PyTorch:
        # 0.032 -> 0.044 over 8 steps); weigh it so that the step optimises it
        cfg.method.lam = 10.0
    tr = make_trainer(backend, cfg)
    if backend == "ms":
        assert ms.get_context("mode") == ms.PYNATIVE_MODE
    images, masks = _batch(cfg)
    tr.train_mode()
    loss, terms = tr.losses(images, masks, 0)  # forward only: the same values as the step
    steps = 8 if backend == "torch" else 4
    values = _check_frozen(backend, tr, images, masks, steps, lr=3e-3, step_index=False)
    assert {"task", "kd"} < set(terms) and all(k.startswith("kd") for k in set(terms) - {"task"})

    def num(x):
        return float(x.asnumpy() if backend == "ms" else x.detach())

    assert values[0]["loss"] == pytest.approx(num(loss), rel=1e-6)
    for k, v in terms.items():
        assert values[0][k] == pytest.approx(num(v), rel=1e-6), k
    kd = [v["kd"] for v in values]
    total = [v["loss"] for v in values]
    assert total[-1] < total[0], total
    assert kd[-1] < kd[0], kd


OPTIMIZER_CLASSES = {
    "torch": {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"},
    "ms": {"adamw": "FlatAdamW", "adam": "FlatAdamW", "sgd": "SGD"},
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizers_build(backend):
    set_mode("pynative")
    net = (t_create if backend == "torch" else ms_create)(PAIR[backend][1])
    for name, cls in OPTIMIZER_CLASSES[backend].items():
        cfg = config_from_dict({"optim": {"name": name, "weight_decay": 3e-4}})
        if backend == "torch":
            opt = t_build_optimizer(list(net.parameters()), cfg.optim)
            assert type(opt).__module__.startswith("torch.optim")
        else:
            opt = ms_build_optimizer(net.trainable_params(), cfg.optim)
        assert type(opt).__name__ == cls
        wd = opt.l2 if (backend, name) == ("ms", "adam") else opt.param_groups[0]["weight_decay"]
        assert wd == pytest.approx(3e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distill_needs_a_teacher_checkpoint(backend, root):
    cfg = make_cfg(backend, root)
    cfg.teacher = config_from_dict({"teacher": {"name": PAIR[backend][0]}}).teacher
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        make_trainer(backend, cfg)


# ----------------------------------------------------------------------------- runs


def straight_cfg(backend, root, teacher_file, **over):
    return make_cfg(backend, root, teacher_file(PAIR[backend][0]), train__graph_mode=False, **over)


def _summary(out):
    """What an uninterrupted and a resumed run must agree on: test figures and final state."""
    rd = RunDir(out)
    return summary_metrics(json.loads(rd.metrics.read_text())), rd.read_state().to_json()


@pytest.fixture(scope="module")
def straight_run(root, teacher_file, tmp_path_factory):
    """``get(backend)``: an uninterrupted 2-epoch distillation run (msa_awmse), made once by
    ``irkd distill`` (so it checks the CLI's dispatch to the backend): ``(folder, stdout)``.

    MindSpore trains in PyNative here (GRAPH_MODE compiles cost more than these 4 steps);
    its GRAPH_MODE run is test_resume_after_a_kill_mid_epoch_is_exact's (slow)."""
    made = {}

    def get(backend):
        if backend not in made:
            folder = tmp_path_factory.mktemp("runs")
            cfg_path = folder / "c.yaml"
            save_config(straight_cfg(backend, root, teacher_file), cfg_path)
            out = folder / f"straight-{backend}"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                rc = main(["distill", str(cfg_path), "--out", str(out)])
            assert rc == 0
            made[backend] = (out, printed.getvalue())
        return made[backend]

    return get


def _resume_after_a_kill(backend, cfg, ref, out, monkeypatch):
    real = trainer_class(backend).step

    def dying(self, images, masks, step, lr, **kw):
        if step == 3:  # second step of epoch 2, after step 3's log line was written
            raise KeyboardInterrupt
        return real(self, images, masks, step, lr, **kw)

    monkeypatch.setattr(trainer_class(backend), "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(backend, cfg, out)
    monkeypatch.setattr(trainer_class(backend), "step", real)
    assert RunDir(out).read_state().epoch == 1
    assert any(r.get("step") == 3 for r in RunDir(out).records())
    with pytest.raises(FileExistsError, match="--resume"):
        run(backend, cfg, out)
    res = run(backend, cfg, out, resume=True)
    assert _summary(out) == _summary(ref) == (res["metrics"], res["state"])
    _same_arrays(_arrays(ref / "best.safetensors"), _arrays(out / "best.safetensors"))
    for name in ("student.safetensors", "distiller.safetensors"):
        _same_arrays(
            _arrays(ref / "checkpoints/last" / name), _arrays(out / "checkpoints/last" / name)
        )
    _same_arrays(
        _optimizer_arrays(backend, ref / "checkpoints/last"),
        _optimizer_arrays(backend, out / "checkpoints/last"),
    )
    assert _records(out) == _records(ref)


@pytest.mark.parametrize("backend", ["torch", pytest.param("ms", marks=pytest.mark.slow)])
def test_resume_after_a_kill_mid_epoch_is_exact(
    backend, root, teacher_file, straight_run, tmp_path, monkeypatch
):
    """Resume tolerance on CPU: none. Weights, optimizer state, logs and metrics are equal.

    MindSpore runs in GRAPH_MODE, its default: three compiled runs, slow. Its fast
    counterpart is test_ms_lr_and_read_in_a_compiled_step (a checkpoint read between
    compiled steps repeats them exactly)."""
    if backend == "torch":
        cfg = straight_cfg(backend, root, teacher_file)
        ref, _ = straight_run(backend)
    else:
        cfg = make_cfg(backend, root, teacher_file(PAIR[backend][0]))
        ref = tmp_path / "straight"
        run(backend, cfg, ref)
    _resume_after_a_kill(backend, cfg, ref, tmp_path / "killed", monkeypatch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_refuses_a_different_config(backend, root, teacher_file, straight_run):
    ref, _ = straight_run(backend)
    cfg = straight_cfg(backend, root, teacher_file, optim__lr=1e-2)
    with pytest.raises(ConfigError, match="optim"):
        run(backend, cfg, ref, resume=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_folder_contents_best_on_val_and_log_keys(backend, root, teacher_file, straight_run):
    out, printed = straight_run(backend)
    assert "test split" in printed
    rd = RunDir(out)
    cfg = straight_cfg(backend, root, teacher_file)
    assert load_config(rd.config) == cfg  # the resolved config round-trips
    optimizer_file = "optimizer.pt" if backend == "torch" else "optimizer.ckpt"
    files = (rd.best, rd.best_json, rd.metrics, rd.last / "state.json", rd.last / optimizer_file)
    for p in files + (rd.last / "student.safetensors", rd.last / "distiller.safetensors"):
        assert p.is_file(), p
    recs = rd.records()
    assert recs[0]["kind"] == "start" and recs[0]["backend"] == BACKEND_NAME[backend]
    assert recs[0]["threads"] >= 1
    if backend == "ms":
        assert recs[0]["device"] == "CPU"
    # best = the epoch with the highest validation IoU (first one on ties)
    vals = [r for r in recs if r["kind"] == "val"]
    assert len(vals) == 2
    best = json.loads(rd.best_json.read_text())
    assert best["epoch"] == vals[int(np.argmax([r["iou"] for r in vals]))]["epoch"]
    assert best["epoch"] == rd.read_state().best_epoch
    # selection used validation ids carved from train.txt, disjoint from test.txt
    data = prepare_data(cfg, "unused")
    test_ids = set((root / "test.txt").read_text().split())
    assert best["val_ids"] == len(data.val_ids) == 3
    assert not set(data.val_ids) & test_ids
    assert set(data.val_ids) <= set((root / "train.txt").read_text().split())
    # log records carry lr, terms and throughput
    train = [r for r in recs if r["kind"] == "train"]
    keys = {"kind", "epoch", "step", "lr", "loss", "task", "kd", "kd/enc1", "kd/dec0"}
    assert len(train) == 4 and set(train[0]) == keys | {"images_per_s"}
    assert train[0]["images_per_s"] > 0
    assert [r["step"] for r in train] == [1, 2, 3, 4] and train[0]["lr"] < train[2]["lr"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert {"mean_loss", "mean_kd", "train_s", "images_per_s"} <= set(epochs[0])
    metrics = json.loads(rd.metrics.read_text())
    assert {"iou", "niou", "pd", "fa"} <= set(metrics) and metrics["split"] == "test"
    assert metrics["n_images"] == len(test_ids) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_distilled_best_loads_into_a_bare_student(backend, root, straight_run):
    out, _ = straight_run(backend)
    student = PAIR[backend][1]
    other = "dnanet_xs" if student.startswith("unet") else "unet_s"
    predict = t_predict if backend == "torch" else ms_predict
    arrays, meta = load_neutral(out / "best.safetensors")
    assert not any(k.startswith(("connectors", "losses", "teacher")) for k in arrays)
    set_mode("pynative")
    net = predict.load_network(student, out / "best.safetensors")
    _same_arrays(neutral(backend, net), arrays)
    extra = extra_metadata(meta)
    assert extra["backend"] == BACKEND_NAME[backend] and extra["method"] == "msa_awmse"
    test = IRSTDDataset(root, "test")
    probs = list(predict.predict_probs(net, test, extra["mean"], extra["std"], 32))
    assert len(probs) == 4
    assert all(p.shape == (64, 64) and 0 <= p.min() <= p.max() <= 1 for _, p in probs)
    # a bare student built by its name takes the file strictly; another network does not
    if backend == "torch":
        bare = t_create(student)
        t_load_neutral(bare, out / "best.safetensors")
    else:
        bare = ms_create(student)
        ms_load_neutral(bare, out / "best.safetensors")
    _same_arrays(neutral(backend, bare), arrays)
    with pytest.raises(WeightsError):
        predict.load_network(other, out / "best.safetensors")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stops_the_run_cleanly_via_cli(backend, root, tmp_path, monkeypatch, capsys):
    # A NaN mask pixel, not an image pixel: MindSpore's CPU ReLU maps NaN to 0 (PyTorch's
    # keeps it), so a NaN input does not reliably reach the loss there.
    cfg = make_cfg(backend, root, method="none", train__graph_mode=False)
    cfg_path = tmp_path / "c.yaml"
    save_config(cfg, cfg_path)
    real_epoch = TrainBatches.epoch

    def poisoned(self, e):
        for images, masks in real_epoch(self, e):
            if e == 1:
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
    tr = make_trainer(backend, cfg)
    tr.read(rd.last)  # and it still loads
    _same_arrays(neutral(backend, tr.student), _arrays(rd.last / "student.safetensors"))
    if backend == "torch":  # MindSpore: the same engine code, one more costly trainer
        with pytest.raises(NonFiniteLossError):
            run(backend, cfg, out, resume=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_eval_of_a_distilled_run(backend, root, teacher_file, straight_run, capsys):
    """``irkd eval --run`` dispatches to the run's backend (``irkd distill`` did, for
    ``straight_run``): metrics.json, roc.png and side-by-sides with MSA maps."""
    out, _ = straight_run(backend)
    assert RunDir(out).records()[0]["backend"] == BACKEND_NAME[backend]
    ev = out.parent / "ev"
    assert main(["eval", "--run", str(out), "--n-samples", "2", "--out", str(ev)]) == 0
    assert "IoU" in capsys.readouterr().out
    rep = json.loads((ev / "metrics.json").read_text())
    assert {"iou", "niou", "pd", "fa", "roc"} <= set(rep)
    assert rep["teacher"] == str(teacher_file(PAIR[backend][0]))
    assert rep["backend"] == BACKEND_NAME[backend]
    assert (ev / "roc.png").is_file() and len(list((ev / "samples").glob("*.png"))) == 2
    ref = json.loads((out / "metrics.json").read_text())
    assert rep["iou"] == pytest.approx(ref["iou"], abs=1e-6)


# ----------------------------------------------------------------------------- PyTorch only


def test_torch_resume_after_epoch_is_bit_identical(root, teacher_file, straight_run, tmp_path):
    ref, _ = straight_run("torch")
    out = tmp_path / "resumed"
    cfg = straight_cfg("torch", root, teacher_file)
    first = run("torch", cfg, out, stop_after=1)
    assert first["metrics"] is None and RunDir(out).read_state().epoch == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run("torch", cfg, out)
    res = run("torch", cfg, out, resume=True)
    assert _summary(out) == _summary(ref) == (res["metrics"], res["state"])
    for name in ("student.safetensors", "distiller.safetensors"):
        _same_arrays(
            _arrays(ref / "checkpoints/last" / name), _arrays(out / "checkpoints/last" / name)
        )
    _same_arrays(_arrays(ref / "best.safetensors"), _arrays(out / "best.safetensors"))
    assert _records(out) == _records(ref)


def test_torch_deep_supervision(root, tmp_path):
    cfg = make_cfg("torch", root, method="none", train__deep_supervision=True, schedule__epochs=1)
    res = run("torch", cfg, tmp_path / "ds")
    assert res["metrics"] is not None
    net = t_predict.load_network("dnanet_xxs", tmp_path / "ds" / "best.safetensors")
    assert net.deep_supervision  # kwargs from the file's metadata
    bad = make_cfg("torch", root, method="none", train__deep_supervision=True, model__name="unet_s")
    with pytest.raises(ConfigError, match="no deep-supervision heads"):
        t_train.TorchTrainer(bad)


def test_torch_best_is_the_highest_validation_iou(root, tmp_path, monkeypatch):
    import irkd.engine as engine

    scripted = iter([0.2, 0.5, 0.4])
    monkeypatch.setattr(engine, "validate", lambda trainer, data, **kw: {"iou": next(scripted)})
    cfg = make_cfg("torch", root, method="none", schedule__epochs=3, train__keep_last=3)
    res = run("torch", cfg, tmp_path / "r")
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


def test_torch_cli_train_refusals_eval_weights_and_resume(root, teacher_file, tmp_path, capsys):
    """``irkd train``, the train/distill refusals, ``eval --weights`` and ``--resume --out``."""
    base = make_cfg("torch", root, method="none", schedule__epochs=1)
    cfg_path = tmp_path / "c.yaml"
    save_config(base, cfg_path)
    run_dir = tmp_path / "plain"
    assert main(["train", str(cfg_path), "--out", str(run_dir)]) == 0
    assert "test split" in capsys.readouterr().out
    # train refuses a distillation config, distill refuses a plain one
    ck = teacher_file(PAIR["torch"][0])
    dist = [f"teacher.name={PAIR['torch'][0]}", f"teacher.checkpoint={ck}"]
    dist.append("method.name=msa_awmse")
    assert main(["train", str(cfg_path), *dist, "--out", str(tmp_path / "x")]) == 1
    assert "irkd distill" in capsys.readouterr().err
    assert main(["distill", str(cfg_path), "--out", str(tmp_path / "y")]) == 1
    capsys.readouterr()
    # eval from bare weights, chosen ids, teacher given explicitly
    ids = (root / "test.txt").read_text().split()[:1]
    args = ["eval", "--weights", str(run_dir / "best.safetensors"), "--data", str(root)]
    args += ["--ids", ids[0], "--out", str(tmp_path / "ev2")]
    args += ["--teacher", str(ck), "--teacher-network", PAIR["torch"][0]]
    assert main(args) == 0
    assert [p.name for p in (tmp_path / "ev2" / "samples").iterdir()] == [f"{ids[0]}.png"]
    # resume via --out alone (config from the run folder): already complete, stays complete
    assert main(["train", "--resume", "--out", str(run_dir)]) == 0


# ----------------------------------------------------------------------------- MindSpore only


@pytest.fixture(scope="module")
def graph_trainer(root, teacher_file):
    """A GRAPH_MODE distillation trainer (the U-Net pair), plain SGD, compiled once.

    The U-Net pair keeps the compilation short (seconds); the DNANet pair's train step (about
    25 s to compile) is test_ms_graph_steps_with_the_dnanet_pair (slow).
    """
    cfg = make_cfg(
        "ms",
        root,
        teacher_file(PAIR["ms"][0]),
        optim__name="sgd",
        optim__momentum=0.0,
        optim__weight_decay=0.0,
    )
    tr = ms_train.MSTrainer(cfg, graph=True)
    return tr, _batch(cfg)


def test_ms_graph_steps_freeze_the_teacher_and_lower_the_loss(graph_trainer):
    tr, (images, masks) = graph_trainer
    assert tr.graph and ms.get_context("mode") == ms.GRAPH_MODE
    values = _check_frozen("ms", tr, images, masks, steps=4, lr=2e-2, step_index=False)
    for key in ("loss", "kd"):
        assert values[-1][key] < values[0][key], (key, values)


@pytest.mark.slow
def test_ms_graph_steps_with_the_dnanet_pair(root, teacher_file):
    cfg = make_cfg(
        "ms",
        root,
        teacher_file(DNANET_TEACHER),
        teacher__name=DNANET_TEACHER,
        model__name="dnanet_xxs",
    )
    tr = ms_train.MSTrainer(cfg, graph=True)
    images, masks = _batch(cfg)
    _check_frozen("ms", tr, images, masks)


def test_ms_lr_and_read_in_a_compiled_step(graph_trainer, tmp_path):
    """SGD without momentum or decay: a compiled step moves the weights by ``-lr * grad``
    with the lr set just before it, and a checkpoint read in place between compiled steps
    (``read``: load in place, not ``set_data``) makes them repeat bit for bit.

    Every step starts from the same weights (read back) on the same batch, so it has the same
    gradient: steps of lr ``a`` and ``b`` move the weights in the ratio ``b / a``, lr 0 not
    at all, and the first step again exactly as the first time."""
    tr, (images, masks) = graph_trainer
    set_mode("pynative")  # as another trainer or an evaluation may leave it
    tr.train_mode()
    assert ms.get_context("mode") == ms.GRAPH_MODE
    tr.step(images, masks, 0, 1e-3, where="warm-up")  # compiled (if not yet)
    tr.write(tmp_path)
    params = tr.optimizer.parameters

    def weights():
        return [p.asnumpy().copy() for p in params]

    w0 = weights()
    tr.step(images, masks, 0, 0.0, where="lr 0")
    assert get_lr(tr.optimizer) == [0.0]
    for w, v in zip(weights(), w0, strict=True):
        np.testing.assert_array_equal(w, v)
    steps = []
    for lr in (1e-2, 4e-3, 1e-2):
        tr.read(tmp_path)
        for w, v in zip(weights(), w0, strict=True):
            np.testing.assert_array_equal(w, v)
        values = tr.step(images, masks, 0, lr, where=f"lr {lr}")
        assert get_lr(tr.optimizer)[0] == pytest.approx(lr)
        steps.append((values, [w - v for w, v in zip(weights(), w0, strict=True)]))
    (v1, d1), (_, d2), (v3, d3) = steps
    assert v3 == v1
    for a, b in zip(d3, d1, strict=True):
        np.testing.assert_array_equal(a, b)
    ratio = 4e-3 / 1e-2
    err = sum(float(((b - ratio * a) ** 2).sum()) for a, b in zip(d1, d2, strict=True))
    ref = sum(float(((ratio * a) ** 2).sum()) for a in d1)
    assert ref > 0 and np.sqrt(err / ref) < 1e-3, np.sqrt(err / ref)


def test_ms_non_finite_loss_skips_the_update_in_graph_mode(graph_trainer):
    # A NaN mask pixel (see test_nan_stops_the_run_cleanly_via_cli).
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


@pytest.mark.slow
def test_ms_compiled_eval_sees_the_trained_weights(graph_trainer):
    """``auto`` eval (compiled) agrees with eager eval, also after a further train step.

    Slow (one more compile); test_cli_eval_of_a_distilled_run[ms] evaluates with it."""
    from ms_impl.predict import forward_fn

    tr, (images, masks) = graph_trainer
    x = images[:1]
    x2 = np.zeros((1, 1, 64, 32), np.float32)
    auto = forward_fn(tr.student, mode="auto", max_shapes=1)
    eager = forward_fn(tr.student, mode="pynative")
    first = auto(x)  # compiled here
    np.testing.assert_allclose(first, eager(x), rtol=1e-5, atol=1e-5)
    tr.train_mode()
    tr.step(images, masks, 0, 1e-2, where="t")
    before = ms.get_context("mode")
    a, b = auto(x), eager(x)  # the compiled graph reads the new weights
    assert ms.get_context("mode") == before  # restored after each call
    assert np.abs(a - first).max() > 1e-6  # the step changed the output
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(auto(x2), eager(x2), rtol=1e-5, atol=1e-5)  # eager fallback


@pytest.mark.slow
def test_ms_read_restores_in_place_after_pynative_steps(root, tmp_path):
    """read() after steps: the next steps repeat exactly (PyNative; GRAPH_MODE: test_ms_lr_
    and_read_in_a_compiled_step)."""
    cfg = make_cfg("ms", root, method="none", train__graph_mode=False)
    tr = ms_train.MSTrainer(cfg)
    images, masks = _batch(cfg)
    tr.train_mode()
    tr.step(images, masks, 0, 1e-2, where="0")
    tr.write(tmp_path)
    first = [tr.step(images, masks, i, 1e-2, where="i") for i in (1, 2)]
    w_first = ms_neutral(tr.student)
    tr.read(tmp_path)
    again = [tr.step(images, masks, i, 1e-2, where="i") for i in (1, 2)]
    assert again == first
    _same_arrays(ms_neutral(tr.student), w_first)


def test_ms_optimizer_state_round_trip(tmp_path):
    set_mode("pynative")
    net = ms_create("unet_s")
    cfg = config_from_dict({"optim": {"name": "adamw"}})
    opt = ms_build_optimizer(net.trainable_params(), cfg.optim)
    state = optimizer_state(opt)
    assert "state_step" in state and "learning_rate_group_0" in state
    assert not set(state) & {p.name for p in net.trainable_params()}
    set_lr(opt, 0.25)
    state["state_step"].set_data(ms.Tensor(7, ms.int32))
    save_optimizer(opt, tmp_path / "o.ckpt")
    opt2 = ms_build_optimizer(net.trainable_params(), cfg.optim)
    load_optimizer(opt2, tmp_path / "o.ckpt")
    assert get_lr(opt2) == [0.25] and int(optimizer_state(opt2)["state_step"].asnumpy()) == 7
    sgd = ms_build_optimizer(
        net.trainable_params(), config_from_dict({"optim": {"name": "sgd"}}).optim
    )
    with pytest.raises(WeightsError, match="does not fit"):
        load_optimizer(sgd, tmp_path / "o.ckpt")


def _small_ms_params(seed):
    """A few parameters of the shapes a network has (conv, bias, scalar), seeded."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 1, 3, 3), (4,), (), (2, 4, 1, 1), (1,)]
    return [
        ms.Parameter(ms.Tensor(rng.normal(size=s).astype(np.float32)), name=f"p{i}")
        for i, s in enumerate(shapes)
    ]


def _ms_grads(params, step):
    rng = np.random.default_rng(100 + step)
    # tiny gradients too: where Adam is most sensitive to the order of operations
    return tuple(
        ms.Tensor((rng.normal(size=p.shape) * 10.0 ** rng.integers(-9, 1)).astype(np.float32))
        for p in params
    )


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_ms_flat_adamw_is_the_experimental_adamw_bit_for_bit(mode):
    """FlatAdamW (one update over the flattened parameters) against the per-parameter
    experimental AdamW (decoupled decay) and AdamL2 (L2 decay): equal parameters and moments
    after every step, bit for bit."""
    from mindspore.experimental.optim import AdamW

    from ms_impl.optim import AdamL2, FlatAdamW

    set_mode(mode)
    for kind in ("adamw", "adam"):
        ref_params, flat_params = _small_ms_params(0), _small_ms_params(0)
        kw = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8}
        if kind == "adamw":
            ref = AdamW(ref_params, weight_decay=0.05, **kw)
            flat = FlatAdamW(flat_params, weight_decay=0.05, **kw)
        else:
            ref = AdamL2(ref_params, weight_decay=0.05, **kw)
            flat = FlatAdamW(flat_params, l2=0.05, **kw)
        for step in range(4):
            if step == 2:
                set_lr(ref, 3e-3)
                set_lr(flat, 3e-3)
            grads = _ms_grads(ref_params, step)
            ref(grads)
            flat(grads)
            for a, b in zip(ref_params, flat_params, strict=True):
                assert np.array_equal(a.asnumpy(), b.asnumpy()), (kind, step, a.name)
            moments = np.concatenate([m.asnumpy().reshape(-1) for m in ref.exp_avg_sq])
            assert np.array_equal(moments, flat.exp_avg_sq.asnumpy()), (kind, step)
        assert int(flat.state_step.asnumpy()) == 4
        # a moved parameter: the check above compares values that changed
        assert not np.array_equal(flat_params[0].asnumpy(), _small_ms_params(0)[0].asnumpy())


def test_ms_flat_adamw_resumes_a_per_parameter_state(tmp_path):
    """A run saved by the per-parameter AdamW (earlier irkd) resumes under FlatAdamW: the
    moments are packed, and the next step is the one the old optimizer would have taken."""
    from mindspore.experimental.optim import AdamW

    from ms_impl.optim import FlatAdamW

    set_mode("pynative")
    old_params = _small_ms_params(1)
    old = AdamW(old_params, lr=1e-2, weight_decay=0.01)
    for step in range(2):
        old(_ms_grads(old_params, step))
    save_optimizer(old, tmp_path / "old.ckpt")
    assert any(k.startswith("exp_avg.") for k in ms.load_checkpoint(str(tmp_path / "old.ckpt")))
    new_params = [ms.Parameter(p.asnumpy().copy(), name=p.name) for p in old_params]
    new = FlatAdamW(new_params, lr=5.0, weight_decay=0.01)
    load_optimizer(new, tmp_path / "old.ckpt")
    assert get_lr(new) == [pytest.approx(1e-2)] and int(new.state_step.asnumpy()) == 2
    old(_ms_grads(old_params, 2))
    new(_ms_grads(new_params, 2))
    for a, b in zip(old_params, new_params, strict=True):
        assert np.array_equal(a.asnumpy(), b.asnumpy()), a.name
    # another network's state does not fit: one clear error, nothing packed wrongly
    other = FlatAdamW(_small_ms_params(1)[:3], lr=1e-2)
    with pytest.raises(WeightsError, match="does not fit"):
        load_optimizer(other, tmp_path / "old.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["sgd", "adamw", "adam"])
def test_ms_optimizer_steps_match_pytorch(root, tmp_path, optim):
    """3 steps of a dnanet_xxs alone, same neutral weights, same batch, both frameworks.

    Losses agree to float32 rounding, and so do SGD's parameters. Adam(W) divides each
    gradient element by its own running size, so an element whose gradient is rounding noise
    in both frameworks (the bias of a convolution feeding a BatchNorm has an exact gradient
    of 0; so does the weight of a 1-input-channel 1x1 convolution feeding one) moves by up to
    about lr per step differently: the bulk of the weights is compared tightly, the maximum
    loosely. Slow (tens of seconds of PyNative DNANet steps); the parity suite's quick
    ``train/sgd/pynative`` and ``train/adamw/pynative`` cases check the same trajectories.
    """
    torch.manual_seed(0)
    init = tmp_path / "init.safetensors"
    t_save_neutral(t_create("dnanet_xxs"), init, name="dnanet_xxs")
    cfg = make_cfg(
        "ms",
        root,
        method="none",
        model__name="dnanet_xxs",
        model__checkpoint=str(init),
        optim__name=optim,
    )
    images, masks = _batch(cfg)
    lr = 1e-2 if optim == "sgd" else 1e-3
    mt = ms_train.MSTrainer(cfg, graph=False)
    tt = t_train.TorchTrainer(cfg)
    mt.train_mode()
    tt.train_mode()
    loss_drift = 0.0
    for step in range(3):
        a = mt.step(images, masks, step, lr, where="ms")
        b = tt.step(images, masks, step, lr, where="torch")
        loss_drift = max(loss_drift, abs(a["loss"] - b["loss"]))
    ms_w = ms_neutral(mt.student)
    th_w = t_neutral(tt.student)
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


def test_ms_teacher_msa_maps_match_pytorch(teacher_file):
    """The figures' MSA maps: same teacher weights, same image, both frameworks."""
    set_mode("pynative")
    ckpt = teacher_file(DNANET_TEACHER)
    method = MethodConfig(stages=["enc1", "dec0", "dec2"])
    x = np.random.default_rng(3).standard_normal((1, 1, 64, 96)).astype(np.float32)
    ms_maps = ms_predict.teacher_msa_maps(ms_predict.load_network(DNANET_TEACHER, ckpt), method, x)
    th_maps = t_predict.teacher_msa_maps(t_predict.load_network(DNANET_TEACHER, ckpt), method, x)
    assert ms_maps.keys() == th_maps.keys() == {"enc1", "dec0", "dec2"}
    for k in ms_maps:
        assert ms_maps[k].shape == (64, 96) and ms_maps[k].dtype == np.float32
        np.testing.assert_allclose(ms_maps[k], th_maps[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_ms_out_weight_in_the_compiled_step_matches_pytorch(root, teacher_file):
    """``method.out_weight``: the compiled MindSpore step takes the teacher's logits, logs
    ``kd/out`` next to ``kd/<stage>``, and its first step equals PyTorch's from the same
    weights (the U-Net pair, SGD)."""
    import dataclasses

    cfg = make_cfg(
        "ms",
        root,
        teacher_file(PAIR["ms"][0]),
        method__out_weight=0.5,
        optim__name="sgd",
        optim__momentum=0.0,
        optim__weight_decay=0.0,
    )
    th = t_train.TorchTrainer(dataclasses.replace(cfg, backend="pytorch"))
    tr = ms_train.MSTrainer(cfg, graph=True)
    try:
        ms_load_neutral(tr.student, t_neutral(th.student))
        ms_load_neutral(tr.distiller, t_neutral(th.distiller))
        images, masks = _batch(cfg)
        th.train_mode()
        tr.train_mode()
        a = tr.step(images, masks, 0, 1e-2, where="ms step 0")
        b = th.step(images, masks, 0, 1e-2, where="torch step 0")
    finally:
        set_mode("pynative")
    assert tr.distiller.term_names == th.distiller.term_names == ("enc1", "dec0", "out")
    assert set(a) == set(b) == {"loss", "task", "kd", "kd/enc1", "kd/dec0", "kd/out"}
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=LOSS_ATOL, err_msg=key)
    assert b["kd/out"] > 0
    want = cfg.method.lam * (b["kd/enc1"] + b["kd/dec0"] + 0.5 * b["kd/out"])
    np.testing.assert_allclose(b["kd"], want, rtol=1e-6)
