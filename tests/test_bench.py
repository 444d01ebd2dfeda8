"""`irkd bench steps`: the orchestration (fake timers) and one tiny real PyTorch run."""

from __future__ import annotations

import json

import pytest

from irkd.bench import bench_steps, format_steps, step_configs
from irkd.cli import main


def test_step_configs_are_teacher_student_distill(tmp_path):
    runs = step_configs("dnanet", "dnanet_xs", tmp_path / "t.safetensors", stages=["enc1"])
    (lt, t), (ls, s), (ld, d) = runs
    assert t.model.name == "dnanet" and t.method.name == "none" and t.teacher is None
    assert s.model.name == "dnanet_xs" and s.method.name == "none"
    assert (
        d.teacher.name == "dnanet" and d.method.name == "msa_awmse" and d.method.stages == ["enc1"]
    )
    assert "distill" in ld and "teacher" in lt and "student" in ls


def test_bench_steps_reports_first_step_apart(tmp_path):
    seen = []

    def timer(cfg, images, masks, steps):
        seen.append((cfg.model.name, images.shape, steps))
        return [10.0, 1.0, 3.0, 2.0]

    def writer(network, path):
        path.write_bytes(b"x")
        seen.append(("teacher-file", network))

    rows = bench_steps(
        {"fake": timer},
        {"fake": writer},
        teacher="dnanet_xs",
        student="dnanet_xxs",
        batch=2,
        size=32,
        steps=4,
    )
    assert seen[0] == ("teacher-file", "dnanet_xs")
    assert [s[0] for s in seen[1:]] == ["dnanet_xs", "dnanet_xxs", "dnanet_xxs"]
    assert seen[1][1] == (2, 1, 32, 32)
    r = rows[0]
    assert r["first_s"] == 10.0 and r["median_s"] == 2.0 and r["p90_s"] == 3.0
    assert r["images_per_s"] == pytest.approx(1.0)
    assert "first s" in format_steps(rows)
    with pytest.raises(ValueError, match="steps"):
        bench_steps({"fake": timer}, {"fake": writer}, steps=1)


@pytest.mark.slow  # three training processes
def test_cli_bench_steps_pytorch_tiny(tmp_path, capsys):
    out = tmp_path / "steps.json"
    rc = main(
        [
            "bench", "steps", "--backend", "pytorch", "--teacher", "dnanet_xxs",
            "--student", "dnanet_xxs", "--batch", "1", "--size", "32", "--steps", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3 and all(r["median_s"] > 0 for r in rows)
    assert "distill dnanet_xxs->dnanet_xxs" in capsys.readouterr().out


def test_bench_latency_orchestration(tmp_path):
    from irkd.bench import bench_latency, format_latency

    calls = []

    def rt(network, weights, workdir):
        calls.append((network, weights, workdir.name))
        return {"median_ms": {"t": 10.0, "s1": 2.0, "s2": 5.0}[network], "p90_ms": 1.0}

    res = bench_latency(
        {"fake": rt}, teacher="t", students=["s1", "s2", "t"], weights={"s1": "w"}, workdir=tmp_path
    )
    assert [c[0] for c in calls] == ["t", "s1", "s2"] and calls[1][1] == "w"
    assert res["speedup"] == {"fake": {"s1": 5.0, "s2": 2.0}}
    text = format_latency(res)
    assert "5.00x" in text and "teacher" in text


@pytest.mark.slow  # exports and times two networks on four runtimes
def test_cli_bench_latency_real_runtimes_tiny(tmp_path, capsys):
    out = tmp_path / "lat.json"
    rc = main(
        ["bench", "latency", "--teacher", "unet_s", "--students", "dnanet_xxs",
         "--warmup", "1", "--runs", "2", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"pytorch-cpu", "onnxruntime-cpu", "mindspore-pynative", "mindir-graphcell"} <= set(
        res["runtimes"]
    )
    for runtime, nets in res["runtimes"].items():
        assert set(nets) == {"unet_s", "dnanet_xxs"}
        assert all(v["median_ms"] > 0 for v in nets.values()), runtime
        assert res["speedup"][runtime]["dnanet_xxs"] > 0
    assert "median ms" in capsys.readouterr().out


def test_format_contention_pairs_quiet_and_busy():
    from irkd.bench import format_contention

    def row(cond: str, med: float, load: float) -> dict:
        return {"backend": "pytorch", "run": "student x", "condition": cond, "median_s": med,
                "load": [[load, 0.0, 0.0], [load, 0.0, 0.0]]}  # fmt: skip

    text = format_contention([row("quiet", 0.2, 1.0), row("busy", 0.3, 2.0)])
    line = text.splitlines()[-1]
    assert "student x" in line and "1.50x" in line and "2.00" in line
    assert len(format_contention([row("quiet", 0.2, 1.0)]).splitlines()) == 2  # no pair
