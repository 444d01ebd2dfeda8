"""`irkd export` and `irkd release` end to end with the real backends (small networks,
seeded weights, a tiny synthetic dataset): the gate, the artifacts, the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from parity_reports import complete_report, write_report

from irkd.cli import main
from irkd.data import synthesize
from irkd.weights import sha256_file
from torch_ref.models import create_model
from torch_ref.weights import save_neutral_net

TEACHER, STUDENT = "unet_s", "dnanet_xxs"  # small: the test is about the release, not speed


def _run_weights(path, network, seed, data_root):
    torch.manual_seed(seed)
    net = create_model(network)
    meta = {
        "kwargs": {},
        "mean": 90.0,
        "std": 30.0,
        "eval_multiple": 32,
        "data_root": str(data_root),
    }
    save_neutral_net(net, path, name=network, metadata=meta)
    return path


def _passing_report(tmp_path, files):
    return write_report(tmp_path / "parity.json", complete_report(files))


@pytest.fixture(scope="module")
def release_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    data = synthesize(tmp / "data", 6, seed=0, size=64)
    t = _run_weights(tmp / "teacher.safetensors", TEACHER, 0, data)
    s = _run_weights(tmp / "student.safetensors", STUDENT, 1, data)
    return tmp, t, s


def test_release_refuses_without_a_parity_report(release_inputs, capsys):
    tmp, t, s = release_inputs
    out = tmp / "refused"
    rc = main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out)])
    assert rc == 1 and not out.exists()
    assert "needs --parity REPORT" in capsys.readouterr().err
    rc = main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out),
               "--parity", str(tmp / "missing.json")])  # fmt: skip
    assert rc == 1 and not out.exists()
    assert "parity report" in capsys.readouterr().err


@pytest.mark.slow  # exports, converts and times teacher and student on both backends
def test_release_builds_both_backends_and_a_true_manifest(release_inputs, capsys):
    tmp, t, s = release_inputs
    report = _passing_report(tmp, [t, s])
    out = tmp / "rel"
    rc = main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out),
               "--parity", str(report), "--warmup", "1", "--runs", "3",
               "--no-recheck"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"], f["path"]
    paths = {f["path"] for f in m["files"]}
    for role, net in (("teacher", TEACHER), ("student", STUDENT)):
        assert f"ascend/{role}/{net}.mindir" in paths
        assert f"ascend/{role}/{net}_dynamic.mindir" in paths
        assert f"jetson/{role}/{net}.onnx" in paths and f"jetson/{role}/{net}_dynamic.onnx" in paths
        assert f"weights/{role}.safetensors" in paths
        asc = m["artifacts"]["ascend"][role]
        jet = m["artifacts"]["jetson"][role]
        assert asc["checks"]["mindir_vs_eager_max_abs"] <= asc["checks"]["bound"]
        assert asc["checks"]["mindir_dynamic_vs_eager_max_abs"] <= asc["checks"]["bound"]
        assert "converter_lite --fmk=MINDIR" in asc["commands"]["converter_lite"]
        assert "--optimize=ascend_oriented" in asc["commands"]["converter_lite"]
        assert "trtexec --onnx=" in jet["commands"]["trtexec_fp16"]
        assert "--int8" in jet["commands"]["trtexec_int8"]
        assert f"jetson/{role}/calibration_images.npy" in paths
        assert (
            "calib_images=np.load('calibration_images.npy')"
            in jet["commands"]["int8_engine_python"]
        )
    assert m["models"]["student"]["weights_sha256"] == sha256_file(s)
    assert m["parity"]["passed"] is True and m["parity"]["report_sha256"] == sha256_file(report)
    recheck = m["parity"]["recheck"]
    assert recheck["ran"] is False and "--no-recheck" in recheck["why"]
    metrics = m["metrics"]["student"]
    assert metrics["runtime"] == "onnxruntime-cpu" and 0.0 <= metrics["iou"] <= 1.0
    assert metrics["n_images"] == 3
    assert {"pytorch-cpu", "onnxruntime-cpu", "mindspore-pynative", "mindir-graphcell"} <= set(
        m["latency"]
    )
    assert m["speedup_teacher_over_student"]["onnxruntime-cpu"] > 0
    assert m["input"]["normalization"] == {
        "mean": 90.0, "std": 30.0,
        "formula": "x = (grey - mean) / std, grey the 8-bit grayscale value (0..255)",
    }  # fmt: skip
    assert {"mindspore", "torch", "onnx", "onnxruntime"} <= set(m["versions"])
    assert "speedup" in text and "release:" in text
    calib = np.load(out / "jetson" / "student" / "calibration_images.npy")
    assert calib.shape == (3, 1, 256, 256) and calib.dtype == np.float32  # 3 train images
    # normalised like the input ((grey - 90) / 30), not raw grey levels
    assert -3.0 <= float(calib.min()) and float(calib.max()) <= (255 - 90) / 30 + 1e-6
    # the AIPP config points at its AIPP file by a relative name (the release folder moved)
    cfg = (out / "ascend" / "student" / "converter_ascend_aipp.cfg").read_text()
    assert str(tmp) not in cfg and "aipp" in cfg
    # a second release into the same folder is refused
    assert main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out),
                 "--parity", str(report)]) == 1  # fmt: skip


def test_export_is_gated_and_writes_one_model(release_inputs, capsys):
    tmp, _, s = release_inputs
    out = tmp / "exp"
    assert main(["export", "--weights", str(s), "--out", str(out), "--target", "jetson"]) == 1
    assert "needs --parity" in capsys.readouterr().err
    report = _passing_report(tmp, [s])
    rc = main(["export", "--weights", str(s), "--out", str(out), "--target", "jetson",
               "--parity", str(report)])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["network"] == STUDENT and "jetson" in summary["artifacts"]
    assert "ascend" not in summary["artifacts"]
    for f in summary["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]


@pytest.mark.slow  # a release build up to a failing export (tests/test_safety_faults.py: fast)
def test_a_failing_export_leaves_no_release(release_inputs, monkeypatch, capsys):
    tmp, t, s = release_inputs
    from deploy_jetson import release as jet

    def broken(info, out_dir, spec):
        raise ValueError("ONNX vs eager max abs diff 0.5 > 1e-4")

    monkeypatch.setattr(jet, "export_for_release", broken)
    out = tmp / "broken"
    rc = main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out),
               "--parity", str(_passing_report(tmp, [t, s])), "--no-eval",
               "--no-recheck"])  # fmt: skip
    assert rc == 1 and not out.exists()
    assert "[jetson] teacher" in capsys.readouterr().err
    assert not [p for p in tmp.iterdir() if p.name.startswith(".broken")]


def _release(tmp, t, s, out, *extra):
    return main(["release", "--teacher", str(t), "--student", str(s), "--out", str(out),
                 "--parity", str(_passing_report(tmp, [t, s])), "--no-eval",
                 "--warmup", "1", "--runs", "2", *extra])  # fmt: skip


@pytest.mark.slow
def test_release_rechecks_the_networks_itself(release_inputs, capsys):
    """Issue 11, finding 6: a report file alone does not open the gate; the release re-runs
    the network cases on the weights (about 90 s here) and records it in the manifest."""
    tmp, t, s = release_inputs
    out = tmp / "rechecked"
    assert _release(tmp, t, s, out) == 0, capsys.readouterr().err
    rc = json.loads((out / "manifest.json").read_text())["parity"]["recheck"]
    assert rc["ran"] is True and rc["cases"] == 8 and rc["gating"] > 100
    assert 0.0 <= rc["worst_ratio"] <= 1.0
    assert "network parity re-run passed" in capsys.readouterr().err


@pytest.mark.slow
def test_a_forged_report_for_broken_networks_is_caught_by_the_recheck(
    release_inputs, monkeypatch, capsys
):
    """The MindSpore networks computing something else (a leaky ReLU in place of ReLU) pass
    a forged report but not the release's own re-run: nothing is written."""
    import mindspore.nn as msnn

    tmp, t, s = release_inputs
    monkeypatch.setattr(msnn, "ReLU", lambda: msnn.LeakyReLU(0.2))
    out = tmp / "forged"
    assert _release(tmp, t, s, out) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "net/" in err and "Traceback" not in err
    assert not out.exists()
