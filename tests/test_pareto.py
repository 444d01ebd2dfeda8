"""`irkd bench pareto`: study models, rows, verdicts (framework-free), BatchNorm folding on
both backends, INT8 QDQ quantization (tiny inputs; timing is never asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irkd import pareto


def _study(tmp_path, rows=(("student", 0.48), ("msa_awmse", 0.63))):
    res = tmp_path / "results"
    runs = tmp_path / "runs"

    def run(run_id: str, network: str) -> None:
        (res / "runs" / run_id).mkdir(parents=True)
        (res / "runs" / run_id / "config.yaml").write_text(f"model:\n  name: {network}\n")
        (runs / run_id).mkdir(parents=True)
        (runs / run_id / "best.safetensors").write_bytes(b"w")

    run("t-1", "dnanet")
    methods = []
    for i, (row, iou) in enumerate(rows):
        run(f"r{i}-s0", "dnanet_xxs")
        methods.append(
            {
                "row": row,
                "n": 1,
                "run_ids": [f"r{i}-s0"],
                "best": {"iou": {"mean": iou}},
                "last": {"iou": {"mean": iou + 0.01}},
            }
        )
    methods.append({"row": "fitnet", "n": 0, "run_ids": [], "best": {"iou": {"mean": None}}})
    table = {
        "datasets": {
            "nudt": {
                "teacher": {
                    "run_id": "t-1",
                    "done": True,
                    "best": {"iou": 0.64},
                    "last": {"iou": 0.641},
                },
                "methods": methods,
                "ablations": [],
            }
        }
    }
    (res / "table.json").write_text(json.dumps(table))
    return res, runs


def test_study_models_take_iou_from_the_table(tmp_path):
    res, runs = _study(tmp_path)
    models = pareto.study_models(res, "nudt", runs)
    assert [m.label for m in models] == ["teacher", "student", "msa_awmse"]  # fitnet: no run
    assert models[0].network == "dnanet" and models[2].network == "dnanet_xxs"
    assert models[2].iou == 0.63 and models[2].iou_last == pytest.approx(0.64)
    assert models[1].weights == str(runs / "r0-s0" / "best.safetensors")
    assert pareto.study_models(res, "nudt")[0].weights is None
    with pytest.raises(ValueError, match="nuaa"):
        pareto.study_models(res, "nuaa")
    with pytest.raises(ValueError, match="table.json"):
        pareto.study_models(tmp_path, "nudt")


def _lat(ms: float) -> dict:
    return {"median_ms": ms, "min_ms": ms * 0.9}


def test_rows_speedup_gap_goal_and_verdict(tmp_path):
    res, runs = _study(tmp_path, rows=(("student", 0.50), ("msa_awmse", 0.635)))
    models = pareto.study_models(res, "nudt", runs)
    latency = {
        "onnxruntime-cpu": {"dnanet": _lat(120.0), "dnanet_xxs": _lat(30.0)},
        "mindir-graphcell": {"dnanet": _lat(400.0), "dnanet_xxs": _lat(200.0)},
        "onnxruntime-cpu-int8": {"dnanet": _lat(100.0), "dnanet_xxs": _lat(20.0)},
    }
    accuracy = {"onnxruntime-cpu-int8": {"msa_awmse": {"iou": 0.60}}}
    rows = pareto.pareto_rows(models, latency, accuracy)
    by = {(r["runtime"], r["model"]): r for r in rows}
    ort = by[("onnxruntime-cpu", "msa_awmse")]
    assert ort["speedup"] == pytest.approx(4.0) and ort["gap_points"] == pytest.approx(-0.5)
    assert ort["goal"] and ort["iou_source"] == "study"
    assert not by[("onnxruntime-cpu", "student")]["goal"]  # 14 points below
    assert not by[("mindir-graphcell", "msa_awmse")]["goal"]  # 2x only
    q = by[("onnxruntime-cpu-int8", "msa_awmse")]
    # a variant's speedup is against the float32 teacher of its base runtime
    assert q["speedup"] == pytest.approx(6.0) and q["iou_source"] == "measured"
    assert q["gap_points"] == pytest.approx(-4.0) and not q["goal"]
    assert ("onnxruntime-cpu-int8", "student") not in by  # its IoU was not measured
    assert by[("onnxruntime-cpu-int8", "teacher")]["iou"] is None
    v = pareto.verdicts(rows)
    assert v["onnxruntime-cpu"].startswith("met by msa_awmse")
    assert "speed 2.00x (needs 3x)" in v["mindir-graphcell"]
    assert "3.00 points short" in v["onnxruntime-cpu-int8"]
    text = pareto.format_pareto({"rows": rows, "verdict": v})
    assert "| onnxruntime-cpu | msa_awmse | dnanet_xxs | 30.0 |" in text


def test_interleaved_latency_times_every_call_each_round():
    order = []
    out = pareto.interleaved_latency(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, rounds=3
    )
    assert order == ["a", "b"] * 4
    assert set(out["latency"]) == {"a", "b"} and len(out["load_before"]) == 3
    with pytest.raises(ValueError):
        pareto.interleaved_latency({"a": lambda: None}, rounds=0)


def test_plot_writes_a_png(tmp_path):
    rows = [
        {"runtime": "r", "model": "teacher", "median_ms": 10.0, "iou": 0.6},
        {"runtime": "r", "model": "s", "median_ms": 3.0, "iou": 0.59},
        {"runtime": "q", "model": "s", "median_ms": 2.0, "iou": None},
    ]
    path = pareto.plot_pareto(
        {"rows": rows, "models": [{"label": "teacher", "iou": 0.6}]}, tmp_path / "p.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_keeps_a_failed_row_on_the_floor_and_names_the_load(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = {}
    axes = matplotlib.axes.Axes
    real_ylim, real_title = axes.set_ylim, axes.set_title

    def set_ylim(ax, *a, **k):
        seen["ylim"] = a
        return real_ylim(ax, *a, **k)

    def set_title(ax, t, **k):
        seen["title"] = t
        return real_title(ax, t, **k)

    monkeypatch.setattr(axes, "set_ylim", set_ylim)
    monkeypatch.setattr(axes, "set_title", set_title)
    rows = [
        {"runtime": "r", "model": "teacher", "median_ms": 10.0, "iou": 0.64},
        {"runtime": "r", "model": "fitnet", "median_ms": 3.0, "iou": 0.66},
        {"runtime": "r", "model": "l2_off", "median_ms": 3.0, "iou": 0.177},
    ]
    load = {"jetson": [[3.38, 2.2, 2.8], [4.86, 3.6, 3.2]], "ascend": "bad"}
    result = {"rows": rows, "models": [{"label": "teacher", "iou": 0.64}], "load": load}
    pareto.plot_pareto({**result, "dataset": "nudt"}, tmp_path / "p.png")
    low, high = seen["ylim"]
    assert low == pytest.approx(64 - pareto.PLOT_FLOOR_POINTS - 1) and high == pytest.approx(68)
    assert seen["title"] == "nudt: latency vs test IoU (1-min load jetson 3.4 -> 4.9)"


@pytest.mark.parametrize("network", ["dnanet_xxs", "unet_s"])
def test_torch_fold_batchnorm_keeps_outputs(network):
    torch = pytest.importorskip("torch")
    from deploy_jetson.optimize import fold_batchnorm, torch_max_diff
    from torch_ref.models import create_model

    torch.manual_seed(0)
    model = create_model(network)
    gen = torch.Generator().manual_seed(1)
    for mod in model.modules():  # non-trivial statistics, or folding would be a no-op
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5, generator=gen)
            mod.running_var.uniform_(0.5, 2.0, generator=gen)
            mod.weight.data.uniform_(0.5, 1.5, generator=gen)
    model.eval()
    folded, n = fold_batchnorm(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    assert torch_max_diff(model, folded, x) < 1e-4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched


@pytest.mark.slow  # INT8 calibration and quantization of a network
def test_int8_qdq_quantizes_convs(tmp_path):
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from deploy_jetson.onnx_export import INPUT_NAME, export_onnx
    from deploy_jetson.optimize import ort_opt_session, quantize_int8_qdq
    from torch_ref.models import create_model

    torch.manual_seed(0)
    src = export_onnx(create_model("dnanet_xxs"), tmp_path / "m.onnx", height=32, width=32)
    cal = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    q = quantize_int8_qdq(src, tmp_path / "q.onnx", cal)
    assert q["ops"]["QuantizeLinear"] > 0 and q["ops"]["DequantizeLinear"] > 0
    assert q["calibration_images"] == 2 and q["op_types"] == ["Conv"]
    a = ort_opt_session(src).run(None, {INPUT_NAME: cal[:1]})[0]
    b = ort_opt_session(q["path"], level="basic", threads=1).run(None, {INPUT_NAME: cal[:1]})[0]
    assert a.shape == b.shape and np.isfinite(b).all() and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8_qdq(src, tmp_path / "x.onnx", cal, method="nope")
    with pytest.raises(ValueError, match="level"):
        ort_opt_session(src, level="max")


@pytest.mark.parametrize("network", [pytest.param("dnanet_xxs", marks=pytest.mark.slow), "unet_s"])
def test_mindspore_fold_batchnorm_keeps_outputs(network):
    ms = pytest.importorskip("mindspore")
    from mindspore import nn

    from deploy_ascend.fold import fold_batchnorm
    from ms_impl.models import create_model

    ms.set_seed(0)
    net = create_model(network)
    rng = np.random.default_rng(1)
    for p in net.get_parameters():
        if any(k in p.name for k in ("moving_mean", "gamma", "beta")):
            p.set_data(ms.Tensor(rng.uniform(-0.5, 1.5, p.shape).astype(np.float32)))
        if "moving_variance" in p.name:
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
    net.set_train(False)
    folded, n = fold_batchnorm(net)
    n_bn = sum(isinstance(c, nn.BatchNorm2d) for _, c in net.cells_and_names())
    assert n == n_bn > 0
    assert not any(isinstance(c, nn.BatchNorm2d) for _, c in folded.cells_and_names())
    names = [p.name for p in folded.get_parameters()]
    assert len(names) == len(set(names))  # a dynamic MindIR export refuses duplicates
    x = ms.Tensor(np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32))
    assert float(np.abs(net(x).asnumpy() - folded(x).asnumpy()).max()) < 1e-4
