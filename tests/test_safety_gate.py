"""Issue 11, findings 6 and 7: the release gate checks a report, it does not trust it.

Finding 6: a report whose ``passed`` was flipped by hand, a few keys written from scratch, a
report of one selected case, wrongly typed fields, tolerances edited or since tightened, other
framework versions: each refused with one line. Saving the same weights twice gives the same
bytes (the safetensors metadata order was random).

Finding 7: under AdamW, the end-to-end loss and BatchNorm checks after the first step are
advisory (chaos, not implementation error) and their well-conditioned twins gate; a broken
implementation still fails.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from parity_reports import complete_report, write_report

from irkd.gate import GateError, check_gate, installed_versions
from irkd.weights import save_neutral, sha256_file
from parity.core import compare

P = "mindspore~pytorch"


def _weights(tmp_path, name="w", network="dnanet_xxs", value=0.0):
    p = tmp_path / f"{name}.safetensors"
    save_neutral(p, {"a": np.full((2,), value, np.float32)}, network=network)
    return p


@pytest.fixture
def good(tmp_path):
    w = _weights(tmp_path)
    return w, complete_report([w])


def _gate(tmp_path, report, w):
    return check_gate(write_report(tmp_path / "r.json", report), [w])


def test_a_complete_exact_report_passes(tmp_path, good):
    w, report = good
    out = _gate(tmp_path, report, w)
    assert out["gate"]["passed"] and out["gate"]["advisory"] == 0
    assert out["gate"]["cases"] == len({c["case"] for c in report["checks"]})


def test_a_hand_flipped_passed_is_recomputed(tmp_path, good):
    w, report = good
    bad = compare("loss/soft_iou/random", "value mindspore~numpy", 5.0, 1.0, "loss").to_json()
    bad["passed"] = True  # flipped by hand, with the report's verdict and counts
    report["checks"].append(bad)
    report["passed"], report["failed_cases"] = True, []
    report["counts"]["failed"] = 0
    with pytest.raises(GateError, match=r"FAILED \(the report itself claims PASS\).*soft_iou"):
        _gate(tmp_path, report, w)


def test_a_report_written_from_scratch_is_one_line(tmp_path, good):
    w, _ = good
    scratch = {
        "kind": "irkd-parity-report",
        "passed": True,
        "weights": {"dnanet_xxs": {"sha256": sha256_file(w)}},
        "counts": {"failed": 0},
        "checks": [],
    }
    with pytest.raises(GateError, match="malformed: field version is null") as exc:
        _gate(tmp_path, scratch, w)
    assert "\n" not in str(exc.value)


def test_a_report_of_selected_or_quick_cases_is_refused(tmp_path, good):
    w, report = good
    one = copy.deepcopy(report)
    one["checks"] = [c for c in one["checks"] if c["case"] == "net/dnanet_xxs/eval/graph"]
    with pytest.raises(GateError, match=r"incomplete: \d+ of the \d+ cases"):
        _gate(tmp_path, one, w)
    quick = copy.deepcopy(report)
    quick["quick"] = True
    with pytest.raises(GateError, match="quick set only"):
        _gate(tmp_path, quick, w)
    modes = copy.deepcopy(report)
    modes["ms_modes"] = ["pynative"]
    with pytest.raises(GateError, match="MindSpore modes"):
        _gate(tmp_path, modes, w)
    old = copy.deepcopy(report)  # made before the well-conditioned AdamW checks existed
    old["checks"] = [c for c in old["checks"] if not c["what"].endswith("at mindspore weights")]
    with pytest.raises(GateError, match="case train/adamw/graph lacks 10 check"):
        _gate(tmp_path, old, w)
    stray = copy.deepcopy(report)
    stray["checks"].append(compare("net/unet/grad", "v", 1.0, 1.0, "param_grad").to_json())
    with pytest.raises(GateError, match="current case table does not have"):
        _gate(tmp_path, stray, w)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("version", "1", "field version is str"),
        ("quick", "no", "field quick is str"),
        ("checks", {"a": 1}, "field checks is dict"),
        ("weights", [], "field weights is list"),
    ],
)
def test_wrongly_typed_top_fields_are_one_line(tmp_path, good, field, value, named):
    w, report = good
    report[field] = value
    with pytest.raises(GateError, match=named):
        _gate(tmp_path, report, w)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("ratio", "small", r"field checks\[0\]\.ratio is str"),
        ("atol", None, r"field checks\[0\]\.atol is null"),
        ("atol", -1.0, r"field checks\[0\]\.atol is float"),
        ("case", 3, r"field checks\[0\]\.case is int"),
        ("error", ["x"], r"field checks\[0\]\.error is list"),
    ],
)
def test_wrongly_typed_check_fields_are_one_line(tmp_path, good, key, value, named):
    w, report = good
    report["checks"][0][key] = value
    with pytest.raises(GateError, match=named):
        _gate(tmp_path, report, w)


def test_wrongly_typed_fields_give_one_cli_line_not_a_traceback(tmp_path, good, capsys):
    from irkd.cli import main

    w, report = good
    report["weights"]["dnanet_xxs"]["sha256"] = 5
    r = write_report(tmp_path / "r.json", report)
    rc = main(["export", "--weights", str(w), "--out", str(tmp_path / "exp"), "--parity", str(r)])
    err = capsys.readouterr().err
    assert rc == 1 and "weights.dnanet_xxs.sha256 is int" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_edited_or_since_tightened_tolerances_are_recomputed(tmp_path, good, monkeypatch):
    w, report = good
    loose = compare("loss/soft_iou/random", "value", 1.5, 1.0, "loss").to_json()
    loose.update(atol=10.0, rtol=0.0, ratio=0.05, passed=True)  # "passes" under atol 10
    edited = copy.deepcopy(report)
    edited["checks"].append(loose)
    with pytest.raises(GateError, match="FAILED.*soft_iou.*err/tol 5e\\+04"):
        _gate(tmp_path, edited, w)
    # a check at err/tol 0.5 passes today, and fails once the table is 4x tighter
    half = compare("loss/soft_iou/random", "value", 1.0 + 5.5e-5, 1.0, "loss")
    assert 0.4 < half.ratio < 0.6
    report["checks"].append(half.to_json())
    _gate(tmp_path, report, w)
    from parity import tolerances
    from parity.tolerances import Tolerance

    monkeypatch.setitem(tolerances.TOLERANCES, "loss", Tolerance(2.5e-6, 2.5e-5, "tighter"))
    with pytest.raises(GateError, match="FAILED.*under today's tolerance"):
        _gate(tmp_path, report, w)


def test_numbers_that_do_not_belong_together_are_refused(tmp_path, good):
    w, report = good
    forged = compare("loss/soft_iou/random", "value", 9.0, 1.0, "loss").to_json()
    forged.update(ratio=0.0, passed=True)  # error 8 but err/tol 0
    report["checks"].append(forged)
    with pytest.raises(GateError, match="inconsistent"):
        _gate(tmp_path, report, w)


def test_other_framework_versions_are_refused(tmp_path, good):
    w, report = good
    name, version = next(iter(installed_versions().items()))
    report["versions"][name] = version + ".post9"
    with pytest.raises(GateError, match=f"made with {name} {version}.post9"):
        _gate(tmp_path, report, w)
    report["versions"][name] = version
    report["version"] = 2
    with pytest.raises(GateError, match="format version 2"):
        _gate(tmp_path, report, w)


def test_the_report_must_name_the_network_the_file_holds(tmp_path, good):
    w, report = good
    info = report["weights"].pop("dnanet_xxs")
    report["weights"]["dnanet_xs"] = info
    for c in report["checks"]:
        c["case"] = c["case"].replace("net/dnanet_xxs/", "net/dnanet_xs/")
    with pytest.raises(GateError, match="as 'dnanet_xs', but the file holds 'dnanet_xxs'"):
        _gate(tmp_path, report, w)


# ----------------------------------------------------------------------------- finding 7


def _adamw(step, what, value, ref, family, tol=None):
    return compare("train/adamw/graph", f"{what} step {step} {P}", value, ref, family, tol)


def test_adamw_chaos_after_step_one_is_reported_not_gating(tmp_path, good):
    """The demo's failure: bn running_var step 3 at err/tol 1.05 under train_adamw."""
    w, report = good
    chaos = _adamw(3, "bn running_var", 1.0 + 1.155e-4, 1.0, "train_adamw")
    assert 1.0 < chaos.ratio < 1.1
    report["checks"].append(chaos.to_json())
    out = _gate(tmp_path, report, w)
    assert out["gate"]["advisory"] == 1 and out["gate"]["advisory_outside"] == 1
    # the same error at step 1 (identical weights on both sides) still fails
    report["checks"][-1] = _adamw(1, "bn running_var", 1.0 + 1.155e-4, 1.0, "train_adamw").to_json()
    with pytest.raises(GateError, match="FAILED.*running_var step 1"):
        _gate(tmp_path, report, w)
    # ... and so does its well-conditioned twin at step 3
    twin = compare(
        "train/adamw/graph", f"bn running_var step 3 {P} at mindspore weights", 1.0 + 2e-4, 1.0,
        "stats",
    )  # fmt: skip
    report["checks"][-1] = twin.to_json()
    with pytest.raises(GateError, match="FAILED.*at mindspore weights"):
        _gate(tmp_path, report, w)


def test_an_advisory_flag_in_the_file_decides_nothing(tmp_path, good):
    w, report = good
    bad = compare("net/dnanet_xxs/grad", "value mindspore~pytorch", 9.0, 1.0, "loss").to_json()
    bad["gating"] = False
    report["checks"].append(bad)
    with pytest.raises(GateError, match="FAILED"):
        _gate(tmp_path, report, w)


def _run_adamw(monkeypatch=None, perturb=False):
    import ms_impl  # noqa: F401
    from parity.cases_train import LR, train_cases
    from parity.core import Context, run_cases

    if perturb:
        from ms_impl import train as ms_train

        original = ms_train.MSTrainer.step

        def step(self, images, masks, k, lr, **kw):
            out = original(self, images, masks, k, lr, **kw)
            if k == 0:  # what an AdamW sign flip does: the stem moves 1.5 lr off
                import mindspore as ms

                name, p = next(
                    (n, q) for n, q in self.student.parameters_dict().items() if len(q.shape) == 4
                )
                sign = np.sign(np.random.default_rng(0).standard_normal(p.shape))
                p.set_data(ms.Tensor(p.asnumpy() + 1.5 * LR["adamw"] * sign.astype(np.float32)))
            return out

        monkeypatch.setattr(ms_train.MSTrainer, "step", step)
    (case,) = [c for c in train_cases(ms_modes=("pynative",)) if c.name == "train/adamw/pynative"]
    checks, _ = run_cases([case], Context(quick=True, ms_modes=("pynative",)))
    return checks


@pytest.mark.slow  # the train/adamw/pynative case once more (the fast set runs it once)
def test_adamw_weights_apart_within_their_bound_pass_on_conditioned_checks(monkeypatch):
    checks = _run_adamw(monkeypatch, perturb=True)
    bad_gating = [c for c in checks if c.gating and not c.passed]
    assert not bad_gating, [(c.what, c.ratio, c.error) for c in bad_gating]
    outside = [c.what for c in checks if not c.gating and not c.passed]
    assert any(w.startswith("bn running_var step") for w in outside), [
        (c.what, round(c.ratio, 3)) for c in checks
    ]
    conditioned = [c for c in checks if c.what.endswith("at mindspore weights")]
    assert {c.what.split(" step")[0] for c in conditioned} == {
        "loss", "task", "kd", "bn running_mean", "bn running_var",
    }  # fmt: skip
    assert all(c.gating and c.ratio < 0.1 for c in conditioned)


@pytest.mark.slow  # the train/adamw/pynative case once more, with a broken BatchNorm
def test_a_broken_batchnorm_still_fails_the_adamw_case(monkeypatch):
    from mindspore import nn

    from ms_impl.models import dnanet

    monkeypatch.setattr(dnanet, "batch_norm", lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=0.1))
    checks = _run_adamw()
    bad = {c.what for c in checks if c.gating and not c.passed}
    assert f"bn running_var step 1 {P}" in bad
    assert f"bn running_var step 3 {P} at mindspore weights" in bad


# ----------------------------------------------------------------------------- same bytes

_SAVE_TWICE = """
import sys
import numpy as np
side, out = sys.argv[1], sys.argv[2]
if side == "torch":
    import torch
    from torch_ref.models import create_model
    from torch_ref.weights import save_neutral_net as save
    torch.manual_seed(0)
else:
    import ms_impl
    from ms_impl.models import create_model
    from ms_impl.weights import save_neutral_net as save
    import mindspore as ms
    ms.set_seed(0)
net = create_model("dnanet_xxs")
for i in range(4):
    save(net, f"{out}-{i}.safetensors", name="dnanet_xxs", metadata={"mean": 1.0, "std": 2.0})
"""


@pytest.mark.parametrize("side", ["torch", pytest.param("mindspore", marks=pytest.mark.slow)])
def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path, side):
    for run in ("a", "b"):  # two processes: the hash seed of each differs
        subprocess.run(
            [sys.executable, "-c", _SAVE_TWICE, side, str(tmp_path / run)],
            check=True,
            capture_output=True,
            env={**os.environ, "IRKD_TORCH_THREADS": "1"},
        )
    digests = {sha256_file(p) for p in tmp_path.glob("*.safetensors")}
    assert len(list(tmp_path.glob("*.safetensors"))) == 8 and len(digests) == 1
    data = (tmp_path / "a-0.safetensors").read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_a_case_that_crashed_fails_the_gate(tmp_path, good):
    w, report = good
    crashed = compare("train/sgd/graph", "run", 0.0, 0.0, "train_sgd").to_json()
    crashed.update(error="RuntimeError: out of memory", ratio="inf", max_abs="inf", passed=True)
    report["checks"].append(crashed)
    with pytest.raises(GateError, match="FAILED.*train/sgd/graph \\[run\\]: RuntimeError"):
        _gate(tmp_path, report, w)
