"""Weight average of the student (``train.ema``): the decay schedule, one update on both
backends against the numpy formula and each other, the default leaving training untouched,
best/last weights and exact resume with the average, and a MindSpore run. Tiny data (64x64
synthetic, 32 crops) for speed."""

import json

import numpy as np
import pytest
import torch
from mindspore import ops

from irkd.config import ConfigError, config_from_dict, load_config
from irkd.data.prepare import prepare_data
from irkd.rundir import EMA_FILE, RunDir
from irkd.schedule import ema_decay
from irkd.weights import extra_metadata, load_neutral
from ms_impl.ema import ModelEma as MSModelEma
from ms_impl.models import create_model as ms_create_model
from ms_impl.predict import forward_fn as ms_forward_fn
from ms_impl.predict import load_network as ms_load_network
from ms_impl.runtime import set_mode
from ms_impl.train import MSTrainer
from ms_impl.train import run as ms_run
from ms_impl.weights import load_neutral_net as load_neutral_ms
from ms_impl.weights import net_to_neutral
from torch_ref.ema import ModelEma
from torch_ref.models import create_model
from torch_ref.predict import forward_fn
from torch_ref.train import TorchTrainer, run
from torch_ref.weights import load_neutral_net as load_neutral_torch
from torch_ref.weights import net_to_neutral as state_to_neutral

STUDENT = "dnanet_xxs"
TIMING = {"images_per_s", "train_s", "threads"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Bit-exact resume needs the same intra-op thread count in every run of this module.
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRKD_TORCH_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)
    set_mode("pynative")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ema-data")


def make_cfg(ema=0.9, **over):
    d = {
        "name": "ema",
        "seed": 0,
        "data": {"root": None, "synth_n": 16, "crop": 32, "batch_size": 4, "val_fraction": 0.25},
        "model": {"name": STUDENT},
        "method": {"name": "none"},
        "optim": {"lr": 5e-3},
        "schedule": {"epochs": 2, "steps_per_epoch": 3},
        "train": {"log_every": 1, "ema": ema},
    }
    for key, value in over.items():
        sec, _, field = key.partition("__")
        if field:
            d.setdefault(sec, {})[field] = value
        else:
            d[sec] = value
    return config_from_dict(d)


def _arrays(path):
    return load_neutral(path)[0]


def _same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _differ(a, b):
    assert a.keys() == b.keys()
    return any(not np.array_equal(a[k], b[k]) for k in a)


def _records(run_dir):
    return [
        {k: v for k, v in r.items() if k not in TIMING and k != "data"}
        for r in RunDir(run_dir).records()
    ]


# ----------------------------------------------------------------------------- schedule, config


def test_ema_decay_schedule():
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 8) == pytest.approx(0.5)
    assert ema_decay(0.9, 80) == pytest.approx(0.9)  # (1 + 80) / 90 = 0.9 exactly
    assert ema_decay(0.9, 10_000) == 0.9
    assert ema_decay(0.99, 100) == pytest.approx(101 / 110)
    steps = [ema_decay(0.9999, t) for t in range(1, 200)]
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    with pytest.raises(ValueError, match="step"):
        ema_decay(0.9, 0)
    with pytest.raises(ValueError, match="ema"):
        ema_decay(1.0, 3)


def test_config_ema_default_and_range():
    assert load_config(None).train.ema == 0.0
    assert load_config(None, ["train.ema=0.999"]).train.ema == 0.999
    assert load_config(None, ["train.ema=0"]).train.ema == 0.0
    for bad in ("1.0", "-0.1", "1.5", ".nan"):
        with pytest.raises(ConfigError, match=r"^train\.ema: must be in \[0, 1\)"):
            load_config(None, [f"train.ema={bad}"])
    with pytest.raises(ConfigError, match=r"train\.ema"):
        load_config(None, ["train.ema=true"])


# ----------------------------------------------------------------------------- one update


def _numpy_ema(e, w, decay, step):
    d = ema_decay(decay, step)
    return e * np.float32(d) + w * np.float32(1.0 - d)


def test_one_update_matches_numpy_on_both_backends():
    torch.manual_seed(0)
    net = create_model(STUDENT)
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net(torch.randn(2, 1, 32, 32))
    w0 = state_to_neutral(net)
    stats = [k for k in w0 if k.endswith(("running_mean", "running_var"))]
    assert stats
    set_mode("pynative")
    ms_net = ms_create_model(STUDENT)
    load_neutral_ms(ms_net, w0)
    t_ema, m_ema = ModelEma(net, 0.99), MSModelEma(ms_net, 0.99)
    _same_arrays(t_ema.to_neutral(), w0)  # starts equal to the student
    _same_arrays(m_ema.to_neutral(), w0)

    rng = np.random.default_rng(0)
    ref = dict(w0)
    for step in (1, 2, 50):  # the warm-up decays, then the configured one
        w = {k: (v + rng.standard_normal(v.shape).astype(np.float32)) for k, v in ref.items()}
        w = {k: np.abs(v) if k.endswith("running_var") else v for k, v in w.items()}
        load_neutral_torch(net, w)
        load_neutral_ms(ms_net, w)
        d = t_ema.update(step)
        assert m_ema.update(step) == d == ema_decay(0.99, step)
        ref = {k: _numpy_ema(ref[k], w[k], 0.99, step) for k in ref}
        t_out, m_out = t_ema.to_neutral(), m_ema.to_neutral()
        assert t_out.keys() == m_out.keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(t_out[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
            np.testing.assert_allclose(m_out[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
            np.testing.assert_allclose(m_out[k], t_out[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # integer buffers are copied, not averaged
    for name, buf in t_ema.module.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(net.get_buffer(name))
    # the MindSpore network receives the master values (in place) when asked for
    _same_arrays(net_to_neutral(m_ema.module), m_ema.to_neutral())
    # the student is never written by the average
    _same_arrays(state_to_neutral(net), w)
    _same_arrays(net_to_neutral(ms_net), w)


@pytest.mark.slow  # a compile; tests/test_train.py checks the compiled eval sees updates
def test_compiled_eval_sees_each_update():
    """GRAPH_MODE: the eval graph compiled on the first validation reads later averages."""
    tr = MSTrainer(make_cfg(0.9), graph=True)
    x = np.random.default_rng(1).standard_normal((1, 1, 32, 32)).astype(np.float32)
    outs = []
    for step in (1, 2):
        for p in tr.student.get_parameters():
            ops.assign(p, p * 1.01 + 0.01)
        tr.ema.update(step)
        outs.append(tr.eval_forward()(x))  # compiled (mode "auto") at the first call
        ref = ms_load_network(STUDENT)
        load_neutral_ms(ref, tr.ema.to_neutral())
        np.testing.assert_array_equal(outs[-1], ms_forward_fn(ref, mode="pynative")(x))
    assert not np.array_equal(outs[0], outs[1])


# ----------------------------------------------------------------------------- PyTorch runs


def test_default_leaves_training_and_eval_untouched(cache):
    """ema=0: no average at all; ema>0: the raw student trains exactly as without it."""
    cfg0, cfg1 = make_cfg(0.0), make_cfg(0.5)
    batches = prepare_data(cfg0, cache, synth_size=64).batches
    tr0, tr1 = TorchTrainer(cfg0, "cpu"), TorchTrainer(cfg1, "cpu")
    assert tr0.ema is None and tr1.ema is not None
    tr0.train_mode()
    tr1.train_mode()
    for i, (x, m) in enumerate(batches.epoch(0)):
        if i == 3:
            break
        v0 = tr0.step(x, m, i, 5e-3, where="t")
        v1 = tr1.step(x, m, i, 5e-3, where="t")
        assert v0 == v1
    _same_arrays(state_to_neutral(tr0.student), state_to_neutral(tr1.student))
    x = np.random.default_rng(2).standard_normal((1, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(tr0.eval_forward()(x), forward_fn(tr0.student)(x))
    assert not tr0.student.training
    y1 = tr1.eval_forward()(x)
    np.testing.assert_array_equal(y1, forward_fn(tr1.ema.module)(x))
    assert not np.array_equal(y1, forward_fn(tr1.student)(x))


@pytest.fixture(scope="module")
def straight_run(cache, tmp_path_factory):
    """An uninterrupted 2-epoch PyTorch run with the average on."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    res = run(make_cfg(0.9), out, cache_dir=cache, synth_size=64, quiet=True)
    return out, res


def test_best_and_last_are_the_average(straight_run):
    out, res = straight_run
    rd = RunDir(out)
    raw = _arrays(rd.last / "student.safetensors")
    ema = _arrays(rd.last / EMA_FILE)
    assert _differ(raw, ema)
    _same_arrays(_arrays(rd.last_weights), ema)  # last.safetensors: the last epoch's average
    best_epoch = json.loads(rd.best_json.read_text())["epoch"]
    folder = rd.last if best_epoch == 2 else rd.checkpoints / f"epoch_{best_epoch:04d}"
    _same_arrays(_arrays(rd.best), _arrays(folder / EMA_FILE))
    assert _differ(_arrays(rd.best), _arrays(folder / "student.safetensors"))
    arrays, meta = load_neutral(rd.best)
    assert extra_metadata(meta)["ema"] == 0.9
    # the test report scored the average
    metrics = json.loads(rd.metrics.read_text())
    assert metrics["best_epoch"] == best_epoch and res["metrics"]["iou"] == metrics["iou"]


def test_resume_with_the_average_is_bit_identical(cache, straight_run, tmp_path):
    ref, ref_res = straight_run
    out = tmp_path / "resumed"
    cfg = make_cfg(0.9)
    first = run(cfg, out, stop_after=1, cache_dir=cache, synth_size=64, quiet=True)
    assert first["metrics"] is None and (out / "checkpoints/last" / EMA_FILE).is_file()
    res = run(cfg, out, resume=True, cache_dir=cache, synth_size=64, quiet=True)
    assert res["metrics"] == ref_res["metrics"] and res["state"] == ref_res["state"]
    assert res["last"] == ref_res["last"]
    for name in ("student.safetensors", EMA_FILE):
        _same_arrays(
            _arrays(ref / "checkpoints/last" / name), _arrays(out / "checkpoints/last" / name)
        )
    for name in ("best.safetensors", "last.safetensors"):
        _same_arrays(_arrays(ref / name), _arrays(out / name))
    assert _records(out) == _records(ref)


def test_resume_refuses_a_checkpoint_without_the_average(cache, tmp_path):
    out = tmp_path / "r"
    cfg = make_cfg(0.9)
    run(cfg, out, stop_after=1, cache_dir=cache, synth_size=64, quiet=True)
    (out / "checkpoints/last" / EMA_FILE).unlink()
    with pytest.raises(ConfigError, match=r"ema\.safetensors not found: train\.ema=0\.9") as exc:
        run(cfg, out, resume=True, cache_dir=cache, synth_size=64, quiet=True)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- MindSpore run


@pytest.mark.slow  # a compiled MindSpore run; the fast set keeps the compiled-eval check
def test_mindspore_run_with_the_average(cache, tmp_path):
    # U-Net: its train step compiles in seconds (DNANet's in tens of seconds here); the
    # compiled eval of dnanet_xxs is covered by test_compiled_eval_sees_each_update.
    cfg = make_cfg(0.9, backend="mindspore", model__name="unet_s", schedule__steps_per_epoch=2)
    assert cfg.train.graph_mode
    out = tmp_path / "ms"
    res = ms_run(cfg, out, cache_dir=cache, synth_size=64, quiet=True)
    assert res["metrics"] is not None and res["last"] is not None
    rd = RunDir(out)
    assert _differ(_arrays(rd.last / EMA_FILE), _arrays(rd.last / "student.safetensors"))
    _same_arrays(_arrays(rd.last_weights), _arrays(rd.last / EMA_FILE))
    best_epoch = json.loads(rd.best_json.read_text())["epoch"]
    folder = rd.last if best_epoch == 2 else rd.checkpoints / f"epoch_{best_epoch:04d}"
    _same_arrays(_arrays(rd.best), _arrays(folder / EMA_FILE))
    assert _differ(_arrays(rd.best), _arrays(folder / "student.safetensors"))


# ----------------------------------------------------------------------------- parity case


def test_parity_case_passes_and_catches_a_missing_warm_up(monkeypatch):
    import ms_impl.ema
    from parity.cases_loss import _ema_case
    from parity.core import Context

    checks = _ema_case(Context())
    assert len(checks) == 9 and all(c.passed for c in checks), [c.ratio for c in checks]
    monkeypatch.setattr(ms_impl.ema, "ema_decay", lambda ema, step: ema)
    failed = {c.what for c in _ema_case(Context()) if not c.passed}
    assert failed == {
        f"average step {n} mindspore~{ref}" for n in (1, 2, 1000) for ref in ("numpy", "pytorch")
    }
