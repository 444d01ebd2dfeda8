"""The framework-free release orchestration (irkd.release) with fake backends: the gate, the
manifest and its sha256, and no partial release after a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from parity_reports import complete_report, write_report

from irkd.gate import GateError
from irkd.release import ReleaseBackend, ReleaseError, build_release, model_info, speedups
from irkd.weights import save_neutral, sha256_file
from parity.core import compare


def _weights(tmp_path, name, network, value):
    p = tmp_path / f"{name}.safetensors"
    meta = {"mean": 100.0, "std": 20.0, "eval_multiple": 32, "kwargs": {}, "data_root": "d"}
    save_neutral(p, {"a": np.full((3,), value, np.float32)}, network=network, metadata=meta)
    return p


def _report(tmp_path, files, passed=True):
    extra = [] if passed else [compare("loss/soft_iou/random", "value", 9.0, 1.0, "loss")]
    return write_report(tmp_path / "parity.json", complete_report(files, extra))


def _fake_backend(name="fake", fail_on=None):
    def export(info, out_dir, spec):
        if info.role == fail_on:
            raise ValueError("round trip differs by 0.3")
        f = out_dir / f"{info.network}.bin"
        f.write_bytes(info.network.encode())
        return {"artifacts": {"model": f}, "checks": {"max_abs_diff": 0.0}, "commands": {}}

    def latency(infos, dirs):
        return {f"{name}-rt": {"teacher": {"median_ms": 10.0}, "student": {"median_ms": 4.0}}}

    return ReleaseBackend(name, export, latency, lambda: {name: "1.0"})


@pytest.fixture
def pair(tmp_path):
    t = _weights(tmp_path, "teacher", "dnanet", 1.0)
    s = _weights(tmp_path, "student", "dnanet_xs", 2.0)
    return t, s


def test_release_writes_a_manifest_whose_sha256_match(tmp_path, pair):
    t, s = pair
    out = tmp_path / "rel"
    manifest = build_release(
        t, s, out, report=_report(tmp_path, [t, s]), backends=[_fake_backend()],
        evaluate=lambda info, root: {"iou": 0.5, "network": info.network},
    )  # fmt: skip
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["metrics"]["student"] == {"iou": 0.5, "network": "dnanet_xs"}
    assert manifest["speedup_teacher_over_student"] == {"fake-rt": 2.5}
    assert (
        manifest["artifacts"]["fake"]["student"]["artifacts"]["model"]
        == "fake/student/dnanet_xs.bin"
    )
    paths = {f["path"] for f in manifest["files"]}
    assert {"weights/teacher.safetensors", "fake/teacher/dnanet.bin"} <= paths
    for f in manifest["files"]:
        assert sha256_file(out / f["path"]) == f["sha256"]
    assert manifest["models"]["teacher"]["weights_sha256"] == sha256_file(t)
    assert manifest["input"]["normalization"]["mean"] == 100.0
    assert manifest["parity"]["passed"] is True and manifest["versions"]["fake"] == "1.0"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rel")]


def test_release_refuses_without_a_passing_report_for_these_weights(tmp_path, pair):
    t, s = pair
    out = tmp_path / "rel"
    with pytest.raises(GateError, match="not found"):
        build_release(t, s, out, report=tmp_path / "none.json", backends=[_fake_backend()])
    with pytest.raises(GateError, match="FAILED"):
        build_release(t, s, out, report=_report(tmp_path, [t, s], passed=False), backends=[])
    report = _report(tmp_path, [t])  # the student is not covered
    with pytest.raises(GateError, match="not covered"):
        build_release(t, s, out, report=report, backends=[])
    assert not out.exists()


def test_a_failed_step_leaves_no_partial_release(tmp_path, pair):
    t, s = pair
    out = tmp_path / "rel"
    with pytest.raises(ReleaseError, match=r"\[fake\] student \(dnanet_xs\).*round trip"):
        build_release(
            t, s, out, report=_report(tmp_path, [t, s]), backends=[_fake_backend(fail_on="student")]
        )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    out.mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_release(t, s, out, report=_report(tmp_path, [t, s]), backends=[])


def test_model_info_needs_run_metadata(tmp_path):
    p = tmp_path / "bare.safetensors"
    save_neutral(p, {"a": np.zeros(1, np.float32)}, network="dnanet")
    with pytest.raises(ReleaseError, match="normalisation"):
        model_info("student", p)
    info = model_info("teacher", _weights(tmp_path, "t", "dnanet", 0.0))
    assert info.network == "dnanet" and info.std == 20.0 and len(info.sha256) == 64


def test_speedups():
    lat = {
        "a": {"teacher": {"median_ms": 9.0}, "student": {"median_ms": 3.0}},
        "b": {"teacher": {}},
    }
    assert speedups(lat) == {"a": 3.0}
