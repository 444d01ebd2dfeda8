"""The parity suite: its loss/method table passes, it catches broken components, the report,
the CLI and the release gate.

The network and training families have their own tests (tests/test_parity_net.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from parity_reports import complete_report, write_report

from irkd.cli import main
from irkd.gate import GateError, check_gate
from irkd.weights import save_neutral, sha256_file
from parity.cases_loss import loss_cases
from parity.core import Case, Context, build_report, compare, run_cases, select_cases
from parity.suite import resolve_weights, run_parity
from parity.tolerances import TOLERANCES, Tolerance


def _failed(cases, patterns):
    chosen = select_cases(cases, patterns=patterns)
    checks, _ = run_cases(chosen, Context())
    return sorted({c.case for c in checks if not c.passed}), checks


# ----------------------------------------------------------------------------- comparisons


def test_compare_passes_within_and_fails_outside_the_tolerance():
    tol = Tolerance(1e-6, 1e-4, "test")
    ref = np.array([1.0, -2.0, 0.0])
    ok = compare("c", "x", ref + np.array([1e-4, -1e-4, 1e-6]), ref, "loss", tol)
    assert ok.passed and ok.ratio <= 1.0 and ok.max_abs == pytest.approx(1e-4)
    bad = compare("c", "x", ref + np.array([0.0, 0.0, 2e-6]), ref, "loss", tol)
    assert not bad.passed and bad.ratio == pytest.approx(2.0)
    shape = compare("c", "x", np.zeros(3), np.zeros(4), "loss")
    assert not shape.passed and "shape" in shape.error
    nan = compare("c", "x", np.array([np.nan, 1.0]), np.array([0.0, 1.0]), "loss")
    assert not nan.passed and "non-finite" in nan.error
    both_nan = compare("c", "x", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), "loss")
    assert both_nan.passed


def test_a_raising_case_fails_with_its_name():
    def boom(ctx):
        raise RuntimeError("broken on purpose")

    cases = [Case("x/boom", "loss", boom), Case("x/empty", "loss", lambda ctx: [])]
    checks, seconds = run_cases(cases, Context())
    assert [c.case for c in checks] == ["x/boom", "x/empty"]
    assert not any(c.passed for c in checks)
    assert "broken on purpose" in checks[0].error and set(seconds) == {"x/boom", "x/empty"}
    report = build_report(checks, seconds, ctx=Context())
    assert report["passed"] is False and report["failed_cases"] == ["x/boom", "x/empty"]
    json.dumps(report)  # plain JSON (no inf floats)


def test_select_cases():
    cases = [
        Case("a/x", "loss", lambda c: [], quick=True),
        Case("a/y", "loss", lambda c: []),
        Case("b/z", "loss", lambda c: [], quick=True),
    ]
    assert [c.name for c in select_cases(cases, quick=True)] == ["a/x", "b/z"]
    assert [c.name for c in select_cases(cases, patterns=["a/"])] == ["a/x", "a/y"]
    with pytest.raises(ValueError, match="no parity case starts with"):
        select_cases(cases, patterns=["c/"])
    with pytest.raises(ValueError, match="duplicate"):
        select_cases([*cases, cases[0]])


def test_every_case_family_has_a_tolerance():
    for case in loss_cases():
        assert case.family in TOLERANCES, case.name


# ----------------------------------------------------------------------------- the loss table


def test_loss_and_method_table_passes():
    cases = select_cases(loss_cases(), quick=True)
    names = {c.name for c in cases}
    # the coverage: every component and loss, on every input kind
    for method in ("msa_awmse", "fitnet", "at", "cwd", "pkd", "mgd", "fgd", "logit_kd"):
        for kind in ("random", "hot-pixel", "zeros", "tiny", "nomask", "odd"):
            assert f"loss/{method}/{kind}" in names
        assert f"loss/{method}/random/graph" in names
    for part in ("msa", "l2", "awmse"):
        assert f"method/{part}/hot-pixel" in names and f"method/{part}/zeros" in names
    checks, _ = run_cases(cases, Context(quick=True))
    bad = [f"{c.case} [{c.what}] {c.error or c.ratio}" for c in checks if not c.passed]
    assert not bad, bad
    whats = {c.what for c in checks}
    assert {"value pytorch~numpy", "value mindspore~numpy", "value mindspore~pytorch"} <= whats
    assert "grad s mindspore~pytorch" in whats


# ----------------------------------------------------------------------------- broken copies


def test_catches_msa_without_relu(monkeypatch):
    import mindspore as ms
    from mindspore import ops

    from ms_impl.distill import method as mm

    def no_relu(a: ms.Tensor, k: int) -> ms.Tensor:
        return a - ops.avg_pool2d(a, k, 1, k // 2, count_include_pad=False)

    monkeypatch.setattr(mm, "_contrast", no_relu)
    failed, _ = _failed(loss_cases(), ["method/msa/random", "loss/msa_awmse/random"])
    assert "method/msa/random" in failed and "loss/msa_awmse/random" in failed


def test_catches_a_wrong_l2_eps(monkeypatch):
    from ms_impl.distill import method as mm

    right = mm.l2_normalize
    monkeypatch.setattr(mm, "l2_normalize", lambda x, eps=1e-6: right(x, eps * 100))
    failed, _ = _failed(loss_cases(), ["method/l2/", "loss/msa_awmse/tiny"])
    # the guard only matters below the eps: the tiny features (with the per-pixel L2, so not
    # the l2_map / l2-off variants), and the zero vector's gradient
    assert failed == [
        "loss/msa_awmse/tiny",
        "loss/msa_awmse/tiny/awmse-batch",
        "method/l2/tiny",
        "method/l2/zeros",
    ]


def test_catches_a_wrong_pooling_count(monkeypatch):
    import torch.nn.functional as F

    from torch_ref.distill import method as tm

    monkeypatch.setattr(
        tm,
        "_contrast",
        lambda a, k: F.relu(a - F.avg_pool2d(a, k, stride=1, padding=k // 2)),  # pads counted
    )
    failed, _ = _failed(loss_cases(), ["method/msa/random", "method/msa/odd"])
    assert "method/msa/random" in failed and "method/msa/odd" in failed


def test_catches_a_wrong_connector_momentum(monkeypatch):
    from mindspore import nn as msnn

    from ms_impl.distill import method as mm

    real = mm.Connector.__init__

    def init(self, s_ch, t_ch):
        real(self, s_ch, t_ch)
        # the PyTorch value, wrong on the MindSpore side (MindSpore's is 1 - PyTorch's)
        self.bn = msnn.BatchNorm2d(t_ch, eps=1e-5, momentum=0.1)

    monkeypatch.setattr(mm.Connector, "__init__", init)
    failed, checks = _failed(loss_cases(), ["method/connector/"])
    assert failed == ["method/connector/train"]
    bad = {c.what for c in checks if not c.passed}
    assert "bn.running_mean mindspore~numpy" in bad


def test_catches_an_out_term_normalised_like_the_stages(monkeypatch):
    """The output-map term with the stages' per-pixel L2 (a one-channel map becomes 1
    everywhere, the term 0) on the MindSpore side fails its loss and distiller cases."""
    from ms_impl.distill import method as mm

    monkeypatch.setattr(mm, "_out_params", lambda p: dict(p))
    failed, _ = _failed(loss_cases(), ["loss/msa_awmse_out/random", "method/distiller/random/out"])
    assert failed == [
        "loss/msa_awmse_out/random",
        "loss/msa_awmse_out/random/awmse-off",
        "loss/msa_awmse_out/random/graph",
        "loss/msa_awmse_out/random/msa-off",
        "loss/msa_awmse_out/random/on-student",
        "method/distiller/random/out",
        "method/distiller/random/out/graph",
    ]


def test_catches_an_unweighted_out_term_in_the_total(monkeypatch):
    """A PyTorch distiller that adds ``L_out`` without ``out_weight`` fails the total, not
    the terms."""
    from torch_ref.distill import distiller as td

    real = td.Distiller.__init__

    def init(self, method, teacher_channels, student_channels):
        real(self, method, teacher_channels, student_channels)
        if self.out_weight > 0:
            self.out_weight = 1.0  # the branch still runs, the weight is lost

    monkeypatch.setattr(td.Distiller, "__init__", init)
    failed, checks = _failed(loss_cases(), ["method/distiller/random/out"])
    assert failed == ["method/distiller/random/out", "method/distiller/random/out/graph"]
    bad = {c.what for c in checks if not c.passed}
    assert "total pytorch~numpy" in bad and "out pytorch~numpy" not in bad


# ----------------------------------------------------------------------------- report and CLI


def test_cli_parity_quick_selection_writes_a_report(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["parity", "--quick", "--select", "method/", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads(out.read_text())
    assert report["kind"] == "irkd-parity-report" and report["passed"] is True
    assert report["counts"]["failed"] == 0 and report["counts"]["cases"] >= 10
    assert {"mindspore", "torch", "numpy", "python"} <= set(report["versions"])
    row = report["checks"][0]
    assert {"max_abs", "max_rel", "atol", "rtol", "ratio", "passed"} <= set(row)
    assert "method" in report["summary"] and "result: PASS" in text


def test_cli_parity_list_tolerances_and_errors(capsys):
    assert main(["parity", "--tolerances"]) == 0
    assert "train_adamw" in capsys.readouterr().out
    assert main(["parity", "--list", "--select", "loss/fgd/"]) == 0
    listed = capsys.readouterr().out
    assert "loss/fgd/random" in listed and "net/" not in listed
    assert main(["parity", "--select", "nothing/"]) == 1
    assert "no parity case starts with" in capsys.readouterr().err
    assert main(["parity", "--ms-modes", "eager"]) == 1


def test_run_parity_fails_on_a_failing_case(tmp_path):
    cases = [Case("x/bad", "loss", lambda ctx: [compare("x/bad", "v", 1.0, 2.0, "loss")])]
    report = run_parity(cases=cases, out=tmp_path / "r.json", quiet=True)
    assert report["passed"] is False and report["failed_cases"] == ["x/bad"]
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


# ----------------------------------------------------------------------------- the gate


def _weights(tmp_path, name="w.safetensors", network="dnanet_xxs", value=0.0):
    p = tmp_path / name
    save_neutral(p, {"a": np.full((2,), value, np.float32)}, network=network)
    return p


def _report(tmp_path, weights, passed=True, net_case=True):
    report = complete_report([weights])
    net = next(iter(report["weights"]))
    if not net_case:
        report["checks"] = [c for c in report["checks"] if not c["case"].startswith("net/")]
    if not passed:
        bad = compare("loss/soft_iou/random", "value", 5.0, 1.0, "loss").to_json()
        report["checks"].append(bad)
    assert any(c["case"].startswith(f"net/{net}/") for c in report["checks"]) == net_case
    return write_report(tmp_path / "report.json", report)


def test_gate_accepts_the_exact_weights_of_a_passing_report(tmp_path):
    w = _weights(tmp_path)
    report = check_gate(_report(tmp_path, w), [w])
    assert report["weights"]["dnanet_xxs"]["sha256"] == sha256_file(w)


def test_gate_refuses(tmp_path):
    w = _weights(tmp_path)
    with pytest.raises(GateError, match="not found: run `irkd parity"):
        check_gate(tmp_path / "missing.json", [w])
    with pytest.raises(GateError, match="FAILED"):
        check_gate(_report(tmp_path, w, passed=False), [w])
    report = _report(tmp_path, w)
    other = _weights(tmp_path, "other.safetensors", value=1.0)  # same network, other bytes
    with pytest.raises(GateError, match="not covered by parity report"):
        check_gate(report, [other])
    with pytest.raises(GateError, match="incomplete"):
        check_gate(_report(tmp_path, w, net_case=False), [w])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(GateError, match="not an IRKD parity report"):
        check_gate(tmp_path / "junk.json", [w])


def test_resolve_weights_errors(tmp_path):
    from irkd.weights import WeightsError

    with pytest.raises(WeightsError, match="not found"):
        resolve_weights([tmp_path / "none.safetensors"])
    with pytest.raises(WeightsError, match="neutral"):
        resolve_weights([tmp_path / "w.pt"])
    a = _weights(tmp_path, "a.safetensors")
    b = _weights(tmp_path, "b.safetensors", value=2.0)
    with pytest.raises(WeightsError, match="two weights files"):
        resolve_weights([a, b])
    anon = tmp_path / "anon.safetensors"
    save_neutral(anon, {"a": np.zeros(1, np.float32)})
    with pytest.raises(WeightsError, match="no network name"):
        resolve_weights([anon])
