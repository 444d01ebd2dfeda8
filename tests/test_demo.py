"""The main job (`irkd demo`): the plan of its three runs, the summary, and one tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irkd.cli import main
from irkd.config import load_config
from irkd.demo import DEFAULT_CONFIG, format_summary, plan_demo, run_demo


def test_plan_is_teacher_then_student_alone_then_distilled():
    cfg = load_config(DEFAULT_CONFIG)
    plan = plan_demo(cfg)
    labels = [label for label, _ in plan]
    assert labels == ["teacher", "student alone", "student + msa_awmse"]
    teacher, alone, distilled = (c for _, c in plan)
    assert teacher.model.name == cfg.teacher.name and teacher.teacher is None
    assert teacher.method.name == "none" and alone.method.name == "none"
    assert alone.model.name == distilled.model.name == cfg.model.name
    assert distilled.teacher is not None and distilled.method.name == "msa_awmse"
    # The same data, schedule and optimizer for all three: only the network / method differ.
    assert teacher.schedule == alone.schedule == distilled.schedule
    assert teacher.data == alone.data == distilled.data
    assert len({teacher.name, alone.name, distilled.name}) == 3


def test_plan_needs_a_teacher():
    cfg = load_config(DEFAULT_CONFIG, ["teacher=null"])
    with pytest.raises(ValueError, match="teacher"):
        plan_demo(cfg)


def _fake_runner(seen: list):
    def runner(cfg, run_dir: Path) -> dict:
        seen.append(cfg)
        run_dir.mkdir(parents=True)
        iou = {"teacher": 0.5, "student": 0.3}["teacher" if "teacher" in cfg.name else "student"]
        if cfg.teacher is not None:
            iou = 0.4
        return {
            "run_dir": str(run_dir),
            "metrics": {"iou": iou, "niou": iou, "pd": 0.9, "fa_1e6": 12.0},
        }

    return runner


def test_run_demo_passes_the_teachers_best_weights_and_writes_the_summary(tmp_path, capsys):
    seen: list = []
    summary = run_demo(_fake_runner(seen), tmp_path)
    assert [c.teacher is not None for c in seen] == [False, False, True]
    assert seen[2].teacher.checkpoint == str(tmp_path / "demo-teacher" / "best.safetensors")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert [r["iou"] for r in summary["runs"]] == [0.5, 0.3, 0.4]
    table = capsys.readouterr().out
    assert "student + msa_awmse" in table and "40.00" in table and "30.00" in table
    assert format_summary(summary) in table


def test_run_demo_refuses_a_run_that_stopped_early(tmp_path):
    def runner(cfg, run_dir):
        return {"run_dir": str(run_dir), "metrics": None}

    with pytest.raises(RuntimeError, match="stopped before its last epoch"):
        run_demo(runner, tmp_path)


@pytest.mark.slow  # three training runs
def test_demo_end_to_end_tiny(tmp_path, capsys):
    """The real thing, shrunk: 24 synthetic images, 1 epoch, 32-pixel crops (PyTorch)."""
    rc = main(
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--cache",
            str(tmp_path / "data"),
            "data.synth_n=24",
            "data.crop=32",
            "schedule.epochs=1",
            "schedule.warmup_epochs=0",
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == [
        "teacher",
        "student alone",
        "student + msa_awmse",
    ]
    for r in summary["runs"]:
        assert 0.0 <= r["iou"] <= 1.0 and Path(r["dir"], "best.safetensors").is_file()
    assert "student + msa_awmse" in capsys.readouterr().out
